"""Turning raw feature values into embeddings, following the feature schema.

Raw values stay raw everywhere outside the model (ids, seconds, ratios, timestamps) so the stores and
the API never depend on vocabularies; this module is the one place that maps them to embedding rows.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import FeatureSchema, FeatureSpec

MS_PER_HOUR = 3_600_000.0


def feature_ids(spec: FeatureSpec, raw: torch.Tensor) -> torch.Tensor:
    """Raw values (any shape, int or float) -> embedding row ids (int64, same shape)."""
    if spec.boundaries:
        bounds = torch.tensor(spec.boundaries, dtype=torch.float64, device=raw.device)
        # right=True: a value equal to a boundary falls in the upper bucket ([b_i, b_{i+1}) buckets).
        return torch.bucketize(raw.to(torch.float64), bounds, right=True)
    ids = raw.to(torch.int64) if raw.is_floating_point() else raw
    return torch.remainder(ids, spec.vocab)  # ids in [0, 2^63) hash into the vocabulary


class FeatureGroupEmbedding(nn.Module):
    """Embeds a group of features. `forward(raw [..., F]) -> [..., F, e]` is not possible with mixed
    dims, so it returns the concatenation `[..., sum(dims)]`, or the list per feature via `parts`."""

    def __init__(self, specs: tuple[FeatureSpec, ...], init_std: float = 0.05):
        super().__init__()
        self.specs = specs
        self.tables = nn.ModuleList(nn.Embedding(s.vocab, s.dim) for s in specs)
        for t in self.tables:
            nn.init.normal_(t.weight, std=init_std)

    def parts(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        return [table(i) for table, i in zip(self.tables, ids)]

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [..., F] (int64 or float) -> [..., sum(dims)]"""
        if raw.shape[-1] != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} raw features in the last dim, got shape {tuple(raw.shape)}")
        ids = [feature_ids(s, raw[..., i]) for i, s in enumerate(self.specs)]
        return torch.cat(self.parts(ids), dim=-1)


def cross_ids(schema: FeatureSchema, stored: torch.Tensor, ts: torch.Tensor, now: torch.Tensor) -> list[torch.Tensor]:
    """Ids of every cross feature of a set of behaviors.

    stored [B, n, J_s] float32 stored cross values (schema.stored_cross_names() order)
    ts     [B, n] int64 behavior times (ms);  now [B] int64 request times (ms)
    returns J tensors [B, n] int64, in schema.cross order (derived features computed here).
    """
    out, j = [], 0
    for spec in schema.cross:
        if spec.source == "age_hours":
            # A behavior "from the future" (clock skew) counts as age 0.
            age = (now[:, None] - ts).clamp_min(0).to(torch.float64) / MS_PER_HOUR  # [B, n]
            out.append(feature_ids(spec, age))
        else:
            out.append(feature_ids(spec, stored[..., j]))
            j += 1
    return out


def context_raw(schema: FeatureSchema, now: torch.Tensor, hist_len: torch.Tensor) -> torch.Tensor:
    """Raw context values [B, n_context] from the request time and the history length."""
    cols = []
    for spec in schema.context:
        if spec.name == "hour":
            cols.append(torch.div(now, int(MS_PER_HOUR), rounding_mode="floor") % 24)
        else:  # "hist_len" (FeatureSchema validates the names)
            cols.append(hist_len)
    return torch.stack(cols, dim=-1)


def sequence_means(stored: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """User statistics from the behavior log as the model sees it: the mean of every stored cross value
    (e.g. completion ratio, like rate) over the valid behaviors, 0 for an empty sequence.

    stored [B, L, J_s] float32, mask [B, L] bool -> [B, J_s]
    """
    m = mask.to(stored.dtype)[..., None]  # [B, L, 1]
    return (stored * m).sum(1) / m.sum(1).clamp_min(1.0)
