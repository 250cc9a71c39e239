"""The two-stage attention of TWIN: relevance alpha, CP-GSU round-robin top-k, ESU pooling.

Shape symbols as in `TwinConfig`: B batch, C candidates, A heads, L behaviors, k kept, d_k/d_v head widths.

Worked example of the round-robin union (paper sec. 4.3), A = 2 heads, k = 3:
    head 0 ranks behaviors [7, 2, 9, ...], head 1 ranks [2, 5, 7, ...]
    interleave by rank -> 7, 2, | 2, 5, | 9, 7 ...  -> first occurrences 7, 2, 5 -> selected [7, 2, 5]
No score averaging: a behavior ranked high by any one head is kept.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from twin import cpu_threads

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


def _order_key(vals: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """float32 values and positions (broadcastable) -> int64 keys, larger = (value desc, position asc).

    The float bits are mapped to an int32 of the same order (negatives: magnitude bits flipped), put
    above the complemented position: every key is unique, so a plain selection/sort on the keys
    is the tie-broken order with no tie handling. -0.0 is folded into +0.0 first (they compare equal).
    """
    bits = (vals + np.float32(0.0)).view(np.int32)
    mono = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # int32, same order as the floats
    return (mono.astype(np.int64) << 32) + (np.int64(0xFFFFFFFF) - pos)


def _decode_key(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_order_key's inverse: int64 keys -> (float32 values, int64 positions)."""
    mono = (key >> 32).astype(np.int32)
    bits = mono ^ ((mono >> 31) & np.int32(0x7FFFFFFF))  # the mapping is its own inverse
    return bits.view(np.float32), np.int64(0xFFFFFFFF) - (key & np.int64(0xFFFFFFFF))


_PAD_KEY = np.iinfo(np.int64).min  # below every real key


def _candidate_keys(x: np.ndarray, n: int) -> np.ndarray:
    """Order keys [R, W] of a candidate set holding every entry of the n largest of its row (ties
    resolved as the keys order them), x [R, L] float32 (CPU); padding slots hold _PAD_KEY.

    Two levels, so the selection runs on ~2*sqrt(L*n) entries instead of L: the row is cut into
    G groups of s strided members (group g = columns g, g+G, ...: the maxima are elementwise maxima of
    s contiguous slices, one vectorised pass); t = the n-th largest group maximum (a value-only
    partition, ~5x cheaper than an argpartition); the groups whose maximum is >= t are kept and their
    members are the candidates. Complete: n group maxima are >= t, so the n-th largest entry v is >= t,
    and every entry >= v lies in a group whose maximum is >= t.
    Rows where many groups tie at t (a user who repeated one item: equal alphas) would swamp the
    selection with those groups' members, so there only the groups above t give all their members,
    and the entries equal to t are the n of them with the smallest positions (ties rank by position),
    found by scanning the column blocks in order (_tied_keys).
    Example: L = 10,000, n = 100 -> s = 10, G = 1,000: a partition of 1,000 maxima, then ~1,000 members.
    """
    R, L = x.shape
    s = max(1, round(math.sqrt(L / n)))
    G = L // s
    if s < 2 or G < 2 * n:  # too short for two levels to pay: every entry is a candidate
        return _order_key(x, np.arange(L))
    body = torch.from_numpy(x)[:, :s * G].view(R, s, G)  # [R, s, G]
    gmax = body.amax(1).numpy()  # [R, G]
    t = np.partition(gmax, G - n, axis=-1)[:, G - n:G - n + 1]  # [R, 1] n-th largest maximum
    kept = gmax >= t  # [R, G]
    heavy = kept.sum(1) > 2 * n  # [R] rows with many groups tied at t
    if not heavy.any():
        key = _member_keys(x, np.arange(R), kept, s, G)
    else:
        light, hv = np.flatnonzero(~heavy), np.flatnonzero(heavy)
        above = gmax[hv] > t[hv]  # [h, G] fewer than n groups per row
        parts = [(light, _member_keys(x, light, kept[light], s, G)),
                 (hv, np.concatenate([_member_keys(x, hv, above, s, G),
                                      _tied_keys(x, hv, t[hv], above, s, G, n)], axis=1))]
        key = np.full((R, max(k.shape[1] for _, k in parts)), _PAD_KEY)  # [R, W]
        for rows, k in parts:
            key[rows, :k.shape[1]] = k
    if s * G < L:  # the tail columns belong to no group: always candidates
        key = np.concatenate([key, _order_key(x[:, s * G:], np.arange(s * G, L))], axis=1)
    return key


def _member_keys(x: np.ndarray, rows: np.ndarray, groups_mask: np.ndarray, s: int, G: int) -> np.ndarray:
    """Keys of every member of the masked groups: x [R, L], rows int [r] (rows of x), groups_mask
    bool [r, G] -> keys [r, s*w], w = the most groups in a row; rows with fewer are padded."""
    r = rows.size
    rr, kept = np.nonzero(groups_mask)  # row-major: each row's groups, ascending
    count = np.bincount(rr, minlength=r)  # [r]
    w = int(count.max()) if r else 0
    pad = None
    if (count == w).all():  # the usual case: the same number in every row (no ties at t)
        groups = kept.reshape(r, w)
    else:  # ragged: left-align each row's groups, pad with group 0 and mask those keys out below
        groups = np.zeros((r, w), np.int64)
        groups[rr, np.arange(rr.size) - (np.cumsum(count) - count)[rr]] = kept
        pad = np.arange(w)[None, :] >= count[:, None]  # [r, w]
    pos = groups[:, None, :] + G * np.arange(s)[:, None]  # [r, s, w] positions of the members
    flat = torch.from_numpy((rows[:, None, None] * x.shape[1] + pos).reshape(-1))
    vals = torch.from_numpy(x).view(-1).index_select(0, flat).numpy().reshape(r, s, w)
    key = _order_key(vals, pos)  # [r, s, w]
    if pad is not None:
        key[np.broadcast_to(pad[:, None, :], key.shape)] = _PAD_KEY
    return key.reshape(r, s * w)


def _tied_keys(x: np.ndarray, rows: np.ndarray, t: np.ndarray, above: np.ndarray, s: int, G: int,
               n: int) -> np.ndarray:
    """Keys of the n entries equal to t with the smallest positions, outside the `above` groups
    (whose members are candidates already): x [R, L], rows int [h], t [h, 1], above bool [h, G]
    -> keys [h, n] (padded where a row has fewer). Scans column blocks j*G..(j+1)*G in order (a
    block holds member j of every group, positions ascending) and stops once every row has n."""
    h = rows.size
    found_r, found_p = [], []
    have = np.zeros(h, np.int64)
    for j in range(s):
        need = np.flatnonzero(have < n)  # [m]
        if need.size == 0:
            break
        eq = (x[rows[need], j * G:(j + 1) * G] == t[need]) & ~above[need]  # [m, G]
        rr, gg = np.nonzero(eq)
        found_r.append(need[rr])
        found_p.append(j * G + gg)
        have += np.bincount(need[rr], minlength=h)
    fr, fp = np.concatenate(found_r), np.concatenate(found_p)
    order = np.argsort(fr, kind="stable")  # by row; blocks and columns were visited in position order
    fr, fp = fr[order], fp[order]
    rank = np.arange(fr.size) - (np.cumsum(have) - have)[fr]  # position rank within the row
    keep = rank < n
    key = np.full((h, n), _PAD_KEY)
    key[fr[keep], rank[keep]] = _order_key(np.broadcast_to(t, (h, 1))[fr[keep], 0], fp[keep])
    return key


MIN_ROWS_PER_THREAD = 64


def _topk_cpu(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """_topk_cpu_rows over row slices, split over the CPU threads (twin.cpu_threads)."""
    parts = cpu_threads.split(x.shape[0], MIN_ROWS_PER_THREAD, lambda lo, hi: _topk_cpu_rows(x[lo:hi], kk))
    if len(parts) == 1:
        return parts[0]
    return torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])


def _topk_cpu_rows(x: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """_topk_by_value_then_position for float32 on the CPU: the unique (value, position) keys of
    ~1,000 candidates per row, numpy's introselect on them, a sort of the kk survivors; the values
    come back out of the keys. At W1 on 1 thread: ~9 ms, against ~85 ms for _topk_torch (torch.topk
    plus its stable sorts) and ~20 ms for a bare torch.topk, which does not order ties."""
    key = _candidate_keys(x.detach().contiguous().numpy(), kk)  # [R, W], W >= kk
    W = key.shape[1]
    top = np.partition(key, W - kk, axis=-1)[:, W - kk:] if W > kk else key  # [R, kk]
    vals, idx = _decode_key(np.sort(top, axis=-1)[:, ::-1])  # descending
    return torch.from_numpy(np.ascontiguousarray(vals)), torch.from_numpy(np.ascontiguousarray(idx))


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


def full_logsumexp(alpha: torch.Tensor) -> torch.Tensor:
    """How MUCH of the whole sequence matches each target, per head: log sum_l exp(alpha_l) over every
    valid behavior (softmax pooling normalises this away; DIN drops the normalisation for this reason).

    alpha [B, A, C, L], -inf at padding -> [B, C, A]; 0 where a sequence has no valid behavior.
    ~ max alpha + log(number of behaviors near it): it grows with the count of matching behaviors.
    """
    empty = (alpha == NEG_INF).all(-1, keepdim=True)  # [B, A, C, 1]
    # an all -inf row would give -inf, and NaN gradients through logsumexp: compute it on zeros
    lse = torch.logsumexp(alpha.masked_fill(empty, 0.0), dim=-1).masked_fill(empty[..., 0], 0.0)  # [B, A, C]
    return lse.transpose(1, 2)


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
    The cross part of the values is linear, so it is pooled before it is projected:
    sum_k w_ak (K_c,k W^v_c,a) = (sum_k w_ak K_c,k) W^v_c,a; that projects C*A rows instead of C*k.
    """
    keep = valid[:, :, None, :]  # [B, C, 1, k]
    weights = masked_softmax(alpha_sel, keep)  # [B, C, A, k]
    heads = torch.einsum("bcak,bckad->bcad", weights, vals_inh)  # [B, C, A, d_v]
    pooled = torch.einsum("bcak,bckx->bcax", weights, cross)  # [B, C, A, cx]
    A, d_v = vals_inh.shape[-2:]
    heads = heads + torch.einsum("bcax,adx->bcad", pooled, w_v_cross.view(A, d_v, -1))
    evidence = torch.logsumexp(alpha_sel.masked_fill(~keep, NEG_INF), dim=-1)  # [B, C, A]
    evidence = evidence.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return weights, heads.flatten(-2), evidence
