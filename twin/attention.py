"""The two-stage attention of TWIN: relevance alpha, CP-GSU round-robin top-k, ESU pooling.

Shape symbols as in `TwinConfig`: B batch, C candidates, A heads, L behaviors, k kept, d_k/d_v head widths.

Worked example of the round-robin union (paper sec. 4.3), A = 2 heads, k = 3:
    head 0 ranks behaviors [7, 2, 9, ...], head 1 ranks [2, 5, 7, ...]
    interleave by rank -> 7, 2, | 2, 5, | 9, 7 ...  -> first occurrences 7, 2, 5 -> selected [7, 2, 5]
No score averaging: a behavior ranked high by any one head is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

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


def _take(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x [R, L] at idx [R, W] -> [R, W] (torch's gather: 2-4x faster than np.take_along_axis here)."""
    return torch.from_numpy(x).gather(-1, torch.from_numpy(idx)).numpy()


@dataclass
class _Candidates:
    """Per row of x [R, L], the candidate entries of the n largest (see _candidates)."""

    vals: np.ndarray  # [R, W] float32; columns j < s*n_keep: member j // n_keep of group groups[:, j % n_keep]
    groups: np.ndarray | None  # [R, n_keep] kept group ids; None: every column is a candidate (W = L)
    s: int  # members per group
    G: int  # groups per row; columns >= s*G (the tail) are always candidates

    def positions(self, rows: np.ndarray, j: np.ndarray) -> np.ndarray:
        """rows, candidate columns j (same shape, any) -> positions in the row, int64"""
        if self.groups is None:
            return j.astype(np.int64)
        n_keep = self.groups.shape[1]
        grouped = j < self.s * n_keep
        member = self.groups[rows, np.where(grouped, j % n_keep, 0)] + self.G * (j // n_keep)
        return np.where(grouped, member, j - self.s * n_keep + self.s * self.G)


def _candidates(x: np.ndarray, n: int) -> _Candidates:
    """Candidates holding every entry >= the n-th largest of its row, x [R, L] float32 (CPU).

    Two levels, so the selection runs on ~2*sqrt(L*n) entries instead of L: the row is cut into
    G groups of s strided members (group g = columns g, g+G, ...: the maxima are elementwise maxima of
    s contiguous slices); with t the n-th largest group maximum, the groups whose maximum is >= t are
    kept (with a few below t as slack) and their members are the candidates. Complete: n group maxima
    are >= t, so the n-th largest entry v is >= t; every entry >= v >= t lies in a group whose maximum
    is >= t. Groups tied at t are all kept, so tied values are never cut arbitrarily (the caller orders
    ties by position).
    Example: L = 10,000, n = 100 -> s = 10, G = 1,000: select among 1,000 maxima, then ~1,000 members.
    """
    R, L = x.shape
    s = max(1, round(math.sqrt(L / n)))
    G = L // s
    if s < 2 or G < 2 * n:  # too short for two levels to pay: every entry is a candidate
        return _Candidates(x, None, 1, L)
    body = torch.from_numpy(x)[:, :s * G].view(R, s, G)  # [R, s, G]
    gmax = body.amax(1).numpy()  # [R, G]
    # The n + n // 8 largest maxima in one selection: the slack holds the groups tied at t (repeated
    # behaviors tie often), so a second selection is rarely needed.
    m = min(G, n + n // 8)
    groups = np.argpartition(gmax, G - m, axis=-1)[:, G - m:]  # [R, m]
    t = np.partition(_take(gmax, groups), m - n, axis=-1)[:, m - n:m - n + 1]  # [R, 1] n-th largest maximum
    n_keep = int((gmax >= t).sum(1).max())  # >= n: groups tied at t are kept too
    if n_keep > m:
        groups = np.argpartition(gmax, G - n_keep, axis=-1)[:, G - n_keep:]
    # [R, n_keep]: every group whose maximum is >= t (the m largest hold them all when n_keep <= m)
    groups = np.ascontiguousarray(groups)
    n_keep = groups.shape[1]
    g = torch.from_numpy(groups)[:, None, :].expand(R, s, n_keep)
    vals = body.gather(-1, g).reshape(R, s * n_keep)  # [R, s*n_keep]
    if s * G < L:  # the tail columns belong to no group: always candidates
        vals = torch.cat([vals, torch.from_numpy(x[:, s * G:])], dim=1)
    return _Candidates(vals.numpy(), groups, s, G)


def _order_key(vals: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """float32 values [R, W] and positions [R, W] -> int64 keys, larger = (value desc, position asc).

    The float bits are mapped to an int32 of the same order (negatives: magnitude bits flipped), put
    above the complemented position: every key is unique, so a plain selection/sort on the keys
    is the tie-broken order with no tie handling. -0.0 is folded into +0.0 first (they compare equal).
    """
    bits = (vals + np.float32(0.0)).view(np.int32)
    mono = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # [R, W] int32, same order as the floats
    return (mono.astype(np.int64) << 32) + (np.int64(0xFFFFFFFF) - pos)


def _topk_cpu(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """_topk_by_value_then_position for float32 on the CPU: numpy's introselect (argpartition) on
    ~1,000 candidates per row, then unique (value, position) keys on the ~kk survivors; 3-5x faster
    than torch.topk and its stable sorts at W1."""
    xa = x.detach().contiguous().numpy()  # [R, L]
    c = _candidates(xa, kk)
    R, W = c.vals.shape
    cut = np.partition(c.vals, W - kk, axis=-1)[:, W - kk:W - kk + 1] if W > kk else c.vals.min(1, keepdims=True)
    rows, j = np.nonzero(c.vals >= cut)  # the kk largest of each row and every entry tied with its kk-th
    count = np.bincount(rows, minlength=R)  # [R] >= kk
    slot = np.arange(rows.size) - (np.cumsum(count) - count)[rows]  # rank of each survivor in its row
    key = np.full((R, int(count.max())), np.iinfo(np.int64).min)  # [R, width]; padding sorts last
    key[rows, slot] = _order_key(c.vals[rows, j], c.positions(rows, j))
    key = np.sort(key, axis=-1)[:, :-kk - 1:-1]  # [R, kk] descending
    idx = np.int64(0xFFFFFFFF) - (key & np.int64(0xFFFFFFFF))
    return torch.from_numpy(_take(xa, idx)), torch.from_numpy(idx)


def _topk_torch(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """_topk_by_value_then_position with torch ops (any device/dtype). torch.topk does not define which
    of tied values it keeps, so one extra rank is fetched: if the (kk+1)-th value equals the kk-th, a
    tie straddles the cut and those rows are redone with a stable full sort."""
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
        idx = idx.clone()
        idx[straddles] = x[straddles].sort(dim=-1, descending=True, stable=True).indices[..., :kk]
    return vals, idx


def _topk_by_value_then_position(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kk largest entries of each row, ordered by value desc then position asc (so ties keep the
    newest behaviors, deterministically). x [R, L] -> values [R, kk] (descending), indices [R, kk]."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _topk_cpu(x, kk)
    return _topk_torch(x, kk)


def round_robin_topk(alpha: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CP-GSU: walk the heads' rankings round-robin until k unique behaviors are collected.

    alpha [B, A, C, L] relevance, -inf at padded behaviors
    returns positions [B, C, k] int64 (in union order, -1 where fewer than k valid behaviors exist)
            valid     [B, C, k] bool
    Vectorized over B, C (no Python loop per candidate), and no sort over the union: a behavior's
    first occurrence is found through a dense [B*C, L] table of first interleave ranks (one scatter,
    one gather), and the kept ones are compacted by scattering to their running count.
    """
    B, A, C, L = alpha.shape
    R, dev = B * C, alpha.device
    kk = min(k, L)  # head 0's top-k alone holds k unique behaviors, so rank k is the deepest needed
    vals, top = _topk_by_value_then_position(alpha.reshape(B * A * C, L), kk)  # [B*A*C, kk]
    M = kk * A
    # Interleave rank-major: rank 0 of heads 0..A-1, then rank 1, ...
    flat = top.view(B, A, C, kk).permute(0, 2, 3, 1).reshape(R, M)  # [R, M]
    flat_valid = (vals > NEG_INF).view(B, A, C, kk).permute(0, 2, 3, 1).reshape(R, M)
    rank_t = torch.int16 if M < 2 ** 15 else torch.int32
    rank = torch.arange(M, dtype=rank_t, device=dev).expand(R, M)  # [R, M] interleave index
    first_rank = torch.full((R, L), M, dtype=rank_t, device=dev)  # [R, L]
    first_rank.scatter_reduce_(-1, flat, rank, "amin")
    keep = (first_rank.gather(-1, flat) == rank) & flat_valid  # [R, M] first occurrences
    count = keep.cumsum(-1)  # [R, M]
    keep &= count <= k
    # Compact in interleave order: kept entry -> slot count-1; the rest -> dummy slot k (dropped).
    dest = torch.where(keep, count - 1, k)
    out = torch.full((R, k + 1), -1, dtype=torch.int64, device=dev)
    positions = out.scatter_(-1, dest, flat)[:, :k].reshape(B, C, k)
    return positions, positions >= 0


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
