"""The two-stage attention of TWIN: relevance alpha, CP-GSU round-robin top-k, ESU pooling.

Shape symbols as in `TwinConfig`: B batch, C candidates, A heads, L behaviors, k kept, d_k/d_v head widths.

Worked example of the round-robin union (paper sec. 4.3), A = 2 heads, k = 3:
    head 0 ranks behaviors [7, 2, 9, ...], head 1 ranks [2, 5, 7, ...]
    interleave by rank -> 7, 2, | 2, 5, | 9, 7 ...  -> first occurrences 7, 2, 5 -> selected [7, 2, 5]
No score averaging: a behavior ranked high by any one head is kept.
"""
from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def attention_logits(keys: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The ONE implementation of alpha (paper eq. 3-5), shared by training, projector and serving.

    keys    [..., n, d_k]  cached key projections P_a = K_h W^h_a (any leading batch dims)
    queries [..., m, d_k]  q W^q_a of the targets
    bias    [..., 1, n]    cross bias b_a (or None: no bias); -inf marks padded behaviors
    returns [..., m, n]    alpha_a = P_a (q W^q_a)^T / sqrt(d_k) + b_a
    With a bias the leading dims of keys, queries and bias must agree; the scale and the bias are
    fused into one baddbmm so the [.., m, n] tensor (4M entries at W1) is written once.
    """
    d_k = keys.shape[-1]
    scale = 1.0 / math.sqrt(d_k)
    if bias is None:
        return torch.matmul(queries, keys.transpose(-1, -2)) * scale
    lead, m, n = queries.shape[:-2], queries.shape[-2], keys.shape[-2]
    out = torch.baddbmm(
        bias.reshape(-1, 1, n),                     # [X, 1, n] broadcast over the m queries
        queries.reshape(-1, m, d_k),                # [X, m, d_k]
        keys.transpose(-1, -2).reshape(-1, d_k, n),  # [X, d_k, n]
        alpha=scale,
    )
    return out.view(*lead, m, n)


def cross_bias(cross_parts: list[torch.Tensor], w_c: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """b_a = sum_j beta_{a,j} * (K_{c,j} . w^c_{a,j}): each cross feature -> one scalar per head
    (block-diagonal W^c), weighted by beta, not scaled by sqrt(d_k).

    cross_parts J tensors [..., e_j] (the cross embeddings of each feature)
    w_c         [A, sum(e_j)]  the J blocks of w^c_a laid side by side
    beta        [A, J]
    returns     [..., A]
    """
    out, start = None, 0
    for j, part in enumerate(cross_parts):
        e = part.shape[-1]
        term = (part @ w_c[:, start:start + e].T) * beta[:, j]  # [..., A]
        out = term if out is None else out + term
        start += e
    return out


def _topk_by_value_then_position(alpha: torch.Tensor, kk: int) -> torch.Tensor:
    """Indices of the kk largest entries of the last dim, ordered by value desc then position asc.

    alpha [..., L] -> [..., kk]. torch.topk does not define which of tied values it keeps, so one
    extra rank is fetched: if the (kk+1)-th value equals the kk-th, a tie straddles the cut and
    those rows are redone with a stable full sort (rare with real-valued alpha).
    """
    L = alpha.shape[-1]
    fetch = min(kk + 1, L)
    vals, idx = torch.topk(alpha, fetch, dim=-1)  # [..., fetch], values descending
    if fetch > kk:
        straddles = vals[..., kk] == vals[..., kk - 1]  # [...]
        vals, idx = vals[..., :kk], idx[..., :kk]
    else:
        straddles = None
    # Order the kept ones: stable sort by position, then stable sort by value (descending).
    pos_order = idx.sort(dim=-1, stable=True).indices
    idx, vals = idx.gather(-1, pos_order), vals.gather(-1, pos_order)
    idx = idx.gather(-1, vals.sort(dim=-1, descending=True, stable=True).indices)
    if straddles is not None and bool(straddles.any()):
        idx = idx.clone()
        idx[straddles] = alpha[straddles].sort(dim=-1, descending=True, stable=True).indices[..., :kk]
    return idx


def round_robin_topk(alpha: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CP-GSU: walk the heads' rankings round-robin until k unique behaviors are collected.

    alpha [B, A, C, L] relevance, -inf at padded behaviors
    returns positions [B, C, k] int64 (in union order, -1 where fewer than k valid behaviors exist)
            valid     [B, C, k] bool
    Vectorized over B, C (no Python loop per candidate).
    """
    B, A, C, L = alpha.shape
    kk = min(k, L)  # head 0's top-k alone holds k unique behaviors, so rank k is the deepest needed
    top = _topk_by_value_then_position(alpha, kk)  # [B, A, C, kk]
    top_valid = alpha.gather(-1, top) > NEG_INF  # [B, A, C, kk]
    # Interleave rank-major: rank 0 of heads 0..A-1, then rank 1, ...
    flat = top.permute(0, 2, 3, 1).reshape(B, C, kk * A)  # [B, C, M], M = kk*A
    flat_valid = top_valid.permute(0, 2, 3, 1).reshape(B, C, kk * A)
    M = kk * A
    # First occurrence of each position: a stable sort keeps equal positions in interleave order.
    sorted_pos, perm = flat.sort(dim=-1, stable=True)  # [B, C, M]
    first_sorted = torch.ones_like(sorted_pos, dtype=torch.bool)
    first_sorted[..., 1:] = sorted_pos[..., 1:] != sorted_pos[..., :-1]
    first = torch.zeros_like(first_sorted).scatter(-1, perm, first_sorted)
    keep = first & flat_valid
    keep &= keep.cumsum(-1) <= k
    # Compact the kept entries to the front, preserving interleave order.
    order_key = torch.arange(M, device=alpha.device) + (~keep) * M  # [B, C, M]
    order = order_key.argsort(dim=-1)[..., :k] if M >= k else order_key.argsort(dim=-1)
    positions = flat.gather(-1, order)
    valid = keep.gather(-1, order)
    if positions.shape[-1] < k:  # L < k: pad to k
        pad = k - positions.shape[-1]
        positions = torch.nn.functional.pad(positions, (0, pad), value=-1)
        valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    return positions.masked_fill(~valid, -1), valid


def recent_topk(seq_mask: torch.Tensor, n_cand: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline GSU: the k most recent behaviors (sequences are newest first).

    seq_mask [B, L] -> positions, valid [B, C, k] as round_robin_topk.
    """
    B, L = seq_mask.shape
    kk = min(k, L)
    valid = seq_mask[:, :kk]  # [B, kk]
    positions = torch.arange(kk, device=seq_mask.device).expand(B, kk).masked_fill(~valid, -1)
    if kk < k:
        positions = torch.nn.functional.pad(positions, (0, k - kk), value=-1)
        valid = torch.nn.functional.pad(valid, (0, k - kk), value=False)
    return positions[:, None].expand(B, n_cand, k), valid[:, None].expand(B, n_cand, k)


def masked_softmax(alpha: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim ignoring invalid entries; an all-invalid row gives zeros (no NaN)."""
    masked = alpha.masked_fill(~valid, NEG_INF)
    weights = torch.softmax(masked, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


def esu_pool(alpha_sel: torch.Tensor, values: torch.Tensor, valid: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ESU multi-head target attention over the k selected behaviors.

    alpha_sel [B, C, A, k]   relevance of the selected behaviors
    values    [B, C, k, A, d_v]  K W^v_a with the FULL K (inherent + cross parts)
    valid     [B, C, k]
    returns weights  [B, C, A, k] (softmax per head),
            heads    [B, C, A*d_v] (concat of head_a),
            evidence [B, C, A] log-sum-exp of alpha per head (0 with nothing selected): the softmax
                     normaliser that the weighted average hides, i.e. how MUCH of the history matched.
    """
    keep = valid[:, :, None, :]  # [B, C, 1, k]
    weights = masked_softmax(alpha_sel, keep)  # [B, C, A, k]
    heads = torch.einsum("bcak,bckad->bcad", weights, values)  # [B, C, A, d_v]
    evidence = torch.logsumexp(alpha_sel.masked_fill(~keep, NEG_INF), dim=-1)  # [B, C, A]
    evidence = evidence.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return weights, heads.flatten(-2), evidence
