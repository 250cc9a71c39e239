"""Small random TWIN models and batches for tests (no I/O)."""
from __future__ import annotations

import torch

from training.schemas import synthetic_schema
from twin.config import TwinConfig
from twin.model import ServeBatch, TrainBatch, TwinCTR

NOW_MS = 1_764_400_000_000
N_ITEMS, N_AUTHORS, N_CATEGORIES = 1000, 100, 20


def tiny_config(**overrides) -> TwinConfig:
    kw = dict(schema=synthetic_schema(N_ITEMS, N_AUTHORS, N_CATEGORIES, id_dim=16),
              n_heads=4, d_k=8, d_v=8, top_k=20, max_len=300, short_len=10, d_out=16, mlp_dims=(32, 16))
    kw.update(overrides)
    return TwinConfig(**kw)


def tiny_model(seed: int = 0, **overrides) -> TwinCTR:
    torch.manual_seed(seed)
    return TwinCTR(tiny_config(**overrides)).eval()


def raw_items(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Raw inherent values [*shape, 5]: item_id, author_id, category, duration_s, views. The other
    features are functions of the item id, as inherent features are (the model may rely on it)."""
    item = torch.randint(0, N_ITEMS, shape, generator=gen)
    return torch.stack([item, item % N_AUTHORS, (item * 7) % N_CATEGORIES, (item * 13) % 2000 + 1,
                        (item * 31) % 5000], dim=-1)


def train_batch(B: int = 4, L: int = 300, lengths: list[int] | None = None, seed: int = 1, C: int = 3) -> TrainBatch:
    """B sequences of L behaviors (newest first; lengths: valid ones per sequence), C targets each."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [L] * B
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    cross = torch.stack([torch.rand(B, L, generator=g), (torch.rand(B, L, generator=g) > 0.5).float()], -1)
    now = torch.full((B,), NOW_MS)
    # newest first: ages grow with position
    ages = torch.sort(torch.randint(0, 10**10, (B, L), generator=g), dim=1).values
    return TrainBatch(
        target=raw_items(g, B, C), seq_items=raw_items(g, B, L), seq_cross=cross, seq_ts=now[:, None] - ages,
        seq_mask=mask, now=now, hist_len=mask.sum(-1), target_mask=torch.ones(B, C, dtype=torch.bool),
        label=torch.randint(0, 2, (B, C), generator=g).float(),
    )


def serve_batch_from(model: TwinCTR, b: TrainBatch, proj_dtype=torch.float32) -> ServeBatch:
    """The serving inputs for the same samples: projections computed as the projector would."""
    S = min(model.cfg.short_len, b.seq_items.shape[1])
    with torch.no_grad():
        proj = model.project_items(b.seq_items).to(proj_dtype)
    return ServeBatch(
        seq_proj=proj, seq_cross=b.seq_cross, seq_ts=b.seq_ts, seq_mask=b.seq_mask,
        recent_items=b.seq_items[:, :S], cand=b.target, cand_mask=b.target_mask.clone(), now=b.now,
        hist_len=b.hist_len,
    )
