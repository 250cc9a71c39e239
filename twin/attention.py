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

from twin import kernels

NEG_INF = float("-inf")


def attention_logits(keys: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor | None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """The ONE implementation of alpha (paper eq. 3-5), shared by training, projector and serving.

    keys    [..., n, d_k]  cached key projections P_a = K_h W^h_a (any leading batch dims, any strides)
    queries [..., m, d_k]  q W^q_a of the targets
    bias    [..., 1, n]    cross bias b_a (or None: no bias); -inf marks padded behaviors
    out     [..., m, n]    optional contiguous destination (no autograd), e.g. one user's slice of a batch
    returns [..., m, n]    alpha_a = P_a (q W^q_a)^T / sqrt(d_k) + b_a
    With a bias the leading dims of keys, queries and bias must agree; the scale and the bias are
    fused into one baddbmm so the [.., m, n] tensor (4M entries at W1) is written once.
    """
    d_k = keys.shape[-1]
    scale = 1.0 / math.sqrt(d_k)
    if bias is None:
        return torch.matmul(queries, keys.transpose(-1, -2)) * scale
    lead, m, n = queries.shape[:-2], queries.shape[-2], keys.shape[-2]
    args = (bias.reshape(-1, 1, n),                     # [X, 1, n] broadcast over the m queries
            queries.reshape(-1, m, d_k),                # [X, m, d_k]
            keys.transpose(-1, -2).reshape(-1, d_k, n))  # [X, d_k, n]: a view when keys are [X, n, d_k]
    if out is not None:
        torch.baddbmm(*args, alpha=scale, out=out.view(-1, m, n))
        return out
    return torch.baddbmm(*args, alpha=scale).view(*lead, m, n)


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


def round_robin_select(alpha: torch.Tensor, k: int, lengths: torch.Tensor | None = None, want_lse: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CP-GSU: rank the behaviors per head by alpha, walk the rankings round-robin until k unique
    behaviors are collected (paper sec. 4.3). Ties rank the newer behavior (smaller position) first.

    alpha   [B, A, C, L] relevance, -inf at padded behaviors
    lengths [B] behaviors per user (the rest is padding); None = all L
    returns positions [B, C, k] int64 in union order, -1 where fewer than k valid behaviors exist
            valid     [B, C, k] bool
            alpha_sel [B, C, A, k] alpha of every head at the positions (0 where -1)
            lse       [B, C, A] log-sum-exp of alpha over ALL valid behaviors (0 if none), or None
    The machinery (a compiled CPU kernel, torch ops elsewhere) lives in twin.kernels.
    """
    if lengths is None:
        lengths = torch.full((alpha.shape[0],), alpha.shape[-1], dtype=torch.int64, device=alpha.device)
    positions, alpha_sel, lse = kernels.select(alpha, lengths, k, want_lse)
    return positions, positions >= 0, alpha_sel, lse


def round_robin_topk(alpha: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """round_robin_select's positions [B, C, k] and valid [B, C, k] alone."""
    positions, valid, _, _ = round_robin_select(alpha, k)
    return positions, valid


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


def esu_pool(alpha_sel: torch.Tensor, vals_inh: torch.Tensor, cross: torch.Tensor, w_v_cross: torch.Tensor,
             valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ESU multi-head target attention over the k selected behaviors, values K W^v_a with the FULL K.

    alpha_sel [B, C, A, k]       relevance of the selected behaviors
    vals_inh  [B, C, k, A, d_v]  inherent part K_h W^v_{h,a} (cached by the projector)
    cross     [B, C, k, cx]      cross-feature embeddings K_c of the selected behaviors
    w_v_cross [A*d_v, cx]        W^v_c (a Linear's weight)
    valid     [B, C, k]
    returns weights  [B, C, A, k] (softmax per head),
            heads    [B, C, A*d_v] (concat of head_a),
            evidence [B, C, A] log-sum-exp of alpha per head (0 with nothing selected): the softmax
                     normaliser that the weighted average hides, i.e. how MUCH of the history matched.
    (twin.kernels.esu does the weights, evidence and both pooled sums in one CPU pass; esu_heads
    finishes from there.)
    """
    keep = valid[:, :, None, :]  # [B, C, 1, k]
    weights = masked_softmax(alpha_sel, keep)  # [B, C, A, k]
    heads_inh = torch.einsum("bcak,bckad->bcad", weights, vals_inh)  # [B, C, A, d_v]
    pooled = torch.einsum("bcak,bckx->bcax", weights, cross)  # [B, C, A, cx]
    evidence = torch.logsumexp(alpha_sel.masked_fill(~keep, NEG_INF), dim=-1)  # [B, C, A]
    evidence = evidence.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return weights, esu_heads(heads_inh, pooled, w_v_cross), evidence


def esu_heads(heads_inh: torch.Tensor, pooled_cross: torch.Tensor, w_v_cross: torch.Tensor) -> torch.Tensor:
    """head_a = sum_k w_ak K_k W^v_a from its two parts: heads_inh [B, C, A, d_v] (the pooled inherent
    values) and pooled_cross [B, C, A, cx] (sum_k w_ak K_c,k) -> [B, C, A*d_v].
    The cross part of the values is linear, so it is pooled before it is projected:
    sum_k w_ak (K_c,k W^v_c,a) = (sum_k w_ak K_c,k) W^v_c,a; that projects C*A rows instead of C*k."""
    A, d_v = heads_inh.shape[-2:]
    return (heads_inh + torch.einsum("bcax,adx->bcad", pooled_cross, w_v_cross.view(A, d_v, -1))).flatten(-2)
