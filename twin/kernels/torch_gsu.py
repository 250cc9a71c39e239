"""CP-GSU with torch ops, for any device and dtype (the GPU path, and the CPU for non-float32 alpha).

Contract: the same as `twin.kernels.cpu_gsu.select_cpu` (positions, alpha at them, optional full
log-sum-exp), computed from alpha [B, A, C, L] with torch.topk, a stable re-sort for the tie rule,
and the union by a scatter: no Python loop per candidate and no host synchronisation except when a
tie straddles the k-th rank. Speed: `make bench` (part "kernels") measures it against the CPU kernel.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def topk_by_value_then_position(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kk largest entries of each row, ordered by value desc then position asc (ties keep the newest
    behaviors). x [R, L] -> values [R, kk] (descending), indices [R, kk].
    torch.topk does not define which of tied values it keeps, so one extra rank is fetched: if the
    (kk+1)-th value equals the kk-th, a tie straddles the cut and those rows are redone with a stable
    full sort."""
    L = x.shape[-1]
    fetch = min(kk + 1, L)
    vals, idx = torch.topk(x, fetch, dim=-1)  # [R, fetch], values descending
    if fetch > kk:
        straddles = vals[..., kk] == vals[..., kk - 1]
        vals, idx = vals[..., :kk], idx[..., :kk]
    else:
        straddles = None
    # Order the kept ones: stable sort by position, then stable sort by value (descending).
    pos_order = idx.sort(dim=-1, stable=True).indices
    idx, vals = idx.gather(-1, pos_order), vals.gather(-1, pos_order)
    by_value = vals.sort(dim=-1, descending=True, stable=True).indices
    idx, vals = idx.gather(-1, by_value), vals.gather(-1, by_value)
    if straddles is not None and bool(straddles.any()):
        idx, vals = idx.clone(), vals.clone()
        redo = x[straddles].sort(dim=-1, descending=True, stable=True)
        idx[straddles], vals[straddles] = redo.indices[..., :kk], redo.values[..., :kk]
    return vals, idx


def union_round_robin(vals: torch.Tensor, top: torch.Tensor, k: int, L: int) -> torch.Tensor:
    """Per-head rankings vals/top [B, A, C, kk] -> positions [B, C, k] (-1 = none): first occurrences
    in the order rank 0 of heads 0..A-1, rank 1, ... Found through a dense [B*C, L] table of first
    interleave ranks (one scatter, one gather), compacted by scattering to the running count."""
    B, A, C, kk = top.shape
    R, M, dev = B * C, kk * A, top.device
    flat = top.permute(0, 2, 3, 1).reshape(R, M)  # [R, M] rank-major interleave
    flat_valid = (vals > NEG_INF).permute(0, 2, 3, 1).reshape(R, M)
    rank_t = torch.int16 if M < 2 ** 15 else torch.int32
    rank = torch.arange(M, dtype=rank_t, device=dev).expand(R, M)  # [R, M] interleave index
    first_rank = torch.full((R, L), M, dtype=rank_t, device=dev)  # [R, L]
    first_rank.scatter_reduce_(-1, flat, rank, "amin")
    keep = (first_rank.gather(-1, flat) == rank) & flat_valid  # [R, M] first occurrences
    count = keep.cumsum(-1)  # [R, M]
    keep &= count <= k
    dest = torch.where(keep, count - 1, k)  # kept entry -> slot count-1; the rest -> dummy slot k
    out = torch.full((R, k + 1), -1, dtype=torch.int64, device=dev)
    return out.scatter_(-1, dest, flat)[:, :k].reshape(B, C, k)


def full_lse(alpha: torch.Tensor) -> torch.Tensor:
    """How MUCH of the whole sequence matches each target, per head: log sum_l exp(alpha_l) over every
    valid behavior (softmax pooling normalises this away; DIN drops the normalisation for this reason).
    ~ max alpha + log(number of behaviors near it): it grows with the count of matching behaviors.

    alpha [B, A, C, L], -inf at padding -> [B, C, A] in float32; 0 for a row with no valid entry.
    Training differentiates it: an all -inf row would give NaN gradients, so it is computed on zeros."""
    alpha = alpha.float()
    empty = (alpha == NEG_INF).all(-1, keepdim=True)  # [B, A, C, 1]
    lse = torch.logsumexp(alpha.masked_fill(empty, 0.0), dim=-1).masked_fill(empty[..., 0], 0.0)  # [B, A, C]
    return lse.transpose(1, 2)


def gather_alpha(alpha: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """alpha [B, A, C, L] at positions [B, C, k] (-1 allowed) -> [B, C, A, k], 0 where -1."""
    A = alpha.shape[1]
    idx = positions.clamp_min(0)[:, None].expand(-1, A, -1, -1)  # [B, A, C, k]
    return alpha.gather(-1, idx).transpose(1, 2).masked_fill((positions < 0)[:, :, None, :], 0.0)


def select_torch(alpha: torch.Tensor, k: int, want_lse: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """alpha [B, A, C, L] -> positions [B, C, k], alpha_sel [B, C, A, k], lse [B, C, A] or None."""
    B, A, C, L = alpha.shape
    kk = min(k, L)  # head 0's top-k alone holds k unique behaviors, so rank k is the deepest needed
    vals, top = topk_by_value_then_position(alpha.reshape(B * A * C, L), kk)
    positions = union_round_robin(vals.view(B, A, C, kk), top.view(B, A, C, kk), k, L)
    return positions, gather_alpha(alpha, positions), full_lse(alpha) if want_lse else None
