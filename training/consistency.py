"""GSU-ESU consistency (paper Fig. 4): how many of the ESU's own top behaviors the GSU retrieved.

The paper's oracle is "the ESU's top-100 over the full sequence". With A heads that phrase admits
several readings; each is computed from the ESU's weights over ALL L behaviors (each head's softmax
of alpha) and ranks by (weight desc, position asc): the GSU's own tie rule, so ties cannot read low.

  * "sum" (the main reading): a behavior's total attention over the heads, sum_a w_a. The ESU's
    output is W^o applied to the heads' concatenation, so this is how much of the output the
    behavior makes: the behaviors the ESU would use most if it saw everything.
  * "per_head": each head's own top-k, hits averaged over the heads. CP-GSU's round-robin union
    takes about k/A of each head's ranking, so this reads far lower than "sum" for TWIN itself.
  * "max": a behavior's largest weight over the heads.
"""
from __future__ import annotations

import torch

READINGS = ("sum", "per_head", "max")


def top_positions(score: torch.Tensor, k: int) -> torch.Tensor:
    """score [..., L] -> the positions of the k largest, ties to the smaller position: [..., k].
    A stable descending sort keeps equal scores in position order."""
    return score.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def _hits(oracle: torch.Tensor, selected: torch.Tensor, L: int) -> torch.Tensor:
    """oracle [..., k] positions, selected [..., k] positions (-1 = none) -> |oracle & selected| [...]"""
    member = torch.zeros(*oracle.shape[:-1], L + 1, dtype=torch.bool)
    member.scatter_(-1, oracle, True)
    return member.gather(-1, selected.clamp_min(-1) % (L + 1)).logical_and(selected >= 0).sum(-1)


def oracle_hits(weights: torch.Tensor, positions: torch.Tensor, seq_mask: torch.Tensor, k: int,
                reading: str = "sum") -> torch.Tensor:
    """weights [B, A, C, L] (ESU softmax per head over the full sequence, 0 at padding), positions
    [B, C, k'] the GSU's selection (-1 = none), seq_mask [B, L] -> hits [B, C] (float: per_head is a
    mean) out of min(k, valid L). Padding never enters the oracle (its score is below every weight)."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    B, A, C, L = weights.shape
    kk = min(k, L)
    pad = ~seq_mask[:, None, None, :]  # [B, 1, 1, L]
    w = weights.masked_fill(pad, -1.0)
    n_valid = seq_mask.sum(-1).clamp_max(kk)[:, None]  # [B, 1]
    if reading == "per_head":
        oracle = top_positions(w, kk)  # [B, A, C, kk]
        ok = torch.arange(kk) < n_valid[:, :, None, None]
        oracle = torch.where(ok, oracle, L)  # beyond the valid count: the dummy slot L
        return _hits(oracle, positions[:, None].expand(-1, A, -1, -1), L).float().mean(1)
    score = w.sum(1) if reading == "sum" else w.amax(1)  # [B, C, L]
    oracle = torch.where(torch.arange(kk) < n_valid[:, :, None], top_positions(score, kk), L)
    return _hits(oracle, positions, L).float()
