"""alpha and CP-GSU in one compiled pass over the keys: alpha is computed a chunk of behaviors at a
time into a buffer that stays in the L1 cache, filtered there, and never written in full.

Why: materialised, alpha ([B, A, C, L] float32) is 16 MB at W1 and 160 MB at W2: written by the
GEMM, read back by the selection, and held as a per-thread scratch buffer. Here each alpha value
lives in the L1 cache for a few cycles, so the cost is the arithmetic of the dot products
(A * C * L * (d_k + 1) multiply-adds), the float16 -> float32 conversion of the keys, and the
selection of the few values that pass a running threshold. Measured by `make bench` (parts gsu_fused
and gsu_materialised: the GEMM into a scratch buffer + `cpu_gsu`, the path this replaced), 2-core
dev box, 2026-12-02 16:49 UTC: W1 3.34 vs 3.57 ms p50 (alpha fits that host's L3), W2 19.9 vs
36.4 ms, W3 13.8 vs 17.3 ms; docs/benchmarks.md. At W1 the arithmetic is about 40% of the kernel on one core (2.2 of ~5.5 ms:
numba's vectorised mul + add, two queries per pass over the keys), the first block's ranking ~20%,
the union ~20%.

Contract (`select_fused_cpu`):
  proj        [B, L, D] the cached projections (float16 as the cache holds them, or float32); the
              first A * d_k columns are the keys P_a of the heads, head-major (`TwinCTR._split_proj`).
  bias_rows   [J, B, L] int64 and bias_table [R, A] float32: the cross bias of behavior l for head a
              is b_a(l) = sum_j bias_table[bias_rows[j, b, l], a], summed in j order (each cross feature
              j contributes one table row; `TwinCTR._cross_bias_tables`, `twin.kernels.tables`);
  seq_mask    [B, L] bool: False = padding (alpha -inf there, never selected).
  queries_aug [B, C, A, d_k + 1] float32: the queries scaled by 1/sqrt(d_k), then 1.0 (the bias's
              coefficient): `augment_queries`.
  lengths     [B] int64: behaviors at positions >= lengths[b] are never read.
returns what `twin.kernels.cpu_gsu.select_cpu` returns for alpha = `alpha_reference(...)` of the same
inputs: positions [B, C, k], alpha_sel [B, C, A, k], lse [B, C, A] or None. That alpha is, per entry,
    ((((0 + q_0 P_0) + q_1 P_1) + ...) + q_{d_k-1} P_{d_k-1}) + 1 * bias
in float32 with every product and sum rounded in that order (no fused multiply-add), -inf where
seq_mask is False: the numbers numpy computes term by term; it is alpha of
`twin.attention.attention_logits` up to float32 rounding (~1 ulp: the BLAS GEMM sums in another order). Tests pin the kernel to `select_cpu(alpha_reference())`
exactly, on random, tied and short inputs.

Per user, block by block of behaviors in position order: the block's keys are converted to float32
and transposed into a buffer that stays in the L2 cache ([A, d_k + 1, block]: one head's coordinate
contiguous over behaviors, the cross bias, summed from its table rows, as the last row); then for
every head and candidate of the slice:
 1. alpha of the block into an L1 buffer (the loop vectorises over behaviors);
 2. the first FIRST behaviors are ranked as `cpu_gsu` ranks a whole row (group maxima, a threshold,
    one compare pass), and the row's threshold t becomes their exact kk-th value;
 3. in each later block of CHUNK behaviors, every entry above t (a 32-lane compare -> bit mask)
    appends its order key (value desc, position asc: unique int64) to the row's survivors; when those
    pass `cap`, a quickselect keeps the kk largest and t rises to the kk-th value. Exact: kk kept
    entries are >= t and precede every later entry, so a later entry equal to t ranks below them
    all; hence the strict compare.
The round-robin union then orders the survivors lazily, as `cpu_gsu` does. With want_lse the
log-sum-exp over all valid behaviors is accumulated per chunk (running max, rescaled sum).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from twin.kernels import cpu_threads
from twin.kernels.cpu_gsu import (MIN_ROWS_PER_THREAD, _append_at_least, _exp_small, _move_largest, _round_robin,
                                  _row_topk)
from twin.kernels.simd import MASK_LANES, f32_as_i32, i32_as_f32, to_f32

NEG_INF = np.float32(-np.inf)
CHUNK = 512  # behaviors per later block: 2 KB of alpha, one head's keys (17 x 512 floats) ~35 KB
TILE = 16  # behaviors per step of the float16 -> float32 transposition
CAND_BLOCK = 128  # candidates of one user that share a pass over the keys (bounds the survivors' memory)
FIRST = 4096  # the first behaviors of a row, ranked as cpu_gsu ranks a whole row: the threshold starts high


@njit(inline="always")
def _load_rows(x, brows, btable, mask, A, dk, idx, o, n, kbuf):
    """kbuf[a, d, i] = float32(x[r_i, a d_k + d]) for d < d_k, and kbuf[a, d_k, i] = the cross bias of
    behavior r_i (sum_j btable[brows[j, r_i], a]; -inf where mask[r_i] is False), i < n, with r_i = o + i
    (idx None) or idx[i]. x [L, D] float16 bits (int16) or float32. The keys are converted TILE rows at
    a time into a small buffer, then written out by columns, so that reads and writes both run along
    contiguous memory."""
    W = A * dk
    J = brows.shape[0]
    tile = np.empty((TILE, W), np.float32)
    full = n - n % TILE
    for t0 in range(0, n, TILE):
        m = TILE if t0 < full else n - t0
        for i in range(m):
            r = o + t0 + i if idx is None else idx[t0 + i]
            for j in range(W):
                tile[i, j] = to_f32(x[r, j])
            for a in range(A):
                v = btable[brows[0, r], a]
                for f in range(1, J):
                    v = v + btable[brows[f, r], a]
                kbuf[a, dk, t0 + i] = v if mask[r] else NEG_INF
        for a in range(A):
            for d in range(dk):
                dst = kbuf[a, d]
                col = a * dk + d
                if m == TILE:  # fixed trip count: vectorises
                    for i in range(TILE):
                        dst[t0 + i] = tile[i, col]
                else:
                    for i in range(m):
                        dst[t0 + i] = tile[i, col]


def augment_queries(queries: torch.Tensor) -> torch.Tensor:
    """queries [B, C, A, d_k] -> [B, C, A, d_k + 1] float32: scaled by 1/sqrt(d_k), then 1.0 (the bias)."""
    dk = queries.shape[-1]
    out = torch.empty(*queries.shape[:-1], dk + 1, dtype=torch.float32)
    torch.mul(queries, 1.0 / math.sqrt(dk), out=out[..., :dk])
    out[..., dk] = 1.0
    return out


@njit(inline="always")
def _alpha_pair(kt, q, r, n, buf, bufr):
    """buf[:n] = alpha of the block's first n behaviors for query q, bufr[:n] the same for query r
    (the same array for one query): kt [d_k + 1, >= n] one head's transposed keys + bias row, q, r
    [d_k + 1]. Coordinates are summed in order, four per pass over the block; two queries share the
    loads of the keys (measured at W1: 3.5 -> 2.2 ms on one core against one query at a time)."""
    D = kt.shape[0]
    for j in range(n):
        buf[j] = np.float32(0.0)
        bufr[j] = np.float32(0.0)
    d = 0
    while d + 4 <= D:
        q0, q1, q2, q3 = q[d], q[d + 1], q[d + 2], q[d + 3]
        r0, r1, r2, r3 = r[d], r[d + 1], r[d + 2], r[d + 3]
        k0, k1, k2, k3 = kt[d, :n], kt[d + 1, :n], kt[d + 2, :n], kt[d + 3, :n]  # 1-D views: these vectorise
        for j in range(n):
            a0, a1, a2, a3 = k0[j], k1[j], k2[j], k3[j]
            buf[j] = (((buf[j] + q0 * a0) + q1 * a1) + q2 * a2) + q3 * a3
            bufr[j] = (((bufr[j] + r0 * a0) + r1 * a1) + r2 * a2) + r3 * a3
        d += 4
    while d < D:
        qd, rd, kd = q[d], r[d], kt[d, :n]
        for j in range(n):
            buf[j] = buf[j] + qd * kd[j]
            bufr[j] = bufr[j] + rd * kd[j]
        d += 1


@njit(inline="always")
def _rank_first(buf, first, kk, gbuf, mono, keys, s, acc, want_lse):
    """The first behaviors of a row, ranked as cpu_gsu ranks a row: survivors' keys into s ->
    (count, threshold cut for the later blocks, running max, running sum of exp(alpha - max))."""
    if kk > 0:
        got, mx, blse = _row_topk(buf, first, kk, gbuf, mono, keys, s, acc, want_lse)
    else:
        got, mx, blse = 0, NEG_INF, np.float32(0.0)
    low = NEG_INF
    if got > kk:  # the exact kk-th value so far: the highest threshold the prefix allows
        low = _keep_largest(s, got, kk)
        got = kk
    elif got == kk > 0:
        low = _value_of_key(s[0])
        for i in range(1, got):
            low = min(low, _value_of_key(s[i]))
    run_sum = math.exp(np.float64(blse) - np.float64(mx)) if mx > NEG_INF else 0.0
    return got, _next_up(low), mx, run_sum


@njit(inline="always")
def _keep_above(buf, m, o, cut, s, got, cap, kk):
    """Append the order keys of buf[:m] (positions o..) that are >= cut to s[got:]; past cap, keep
    the kk largest -> (count, the new cut). (cut >= -FLT_MAX: padding never passes.)"""
    got = _append_at_least(buf, m, cut, o, s, got)
    if got > cap:  # at most cap + CHUNK: the buffer's size
        cut = _next_up(_keep_largest(s, got, kk))
        got = kk
    return got, cut


@njit(inline="always")
def _value_of_key(key):
    """The float32 value an order key was made from (-0.0 comes back as +0.0)."""
    b = np.int32(key >> 32)
    return i32_as_f32(b ^ ((b >> 31) & np.int32(0x7FFFFFFF)))


@njit(inline="always")
def _next_up(t):
    """The smallest float32 above t (t not NaN, not +inf): x > t  <=>  x >= _next_up(t)."""
    if t == np.float32(0.0):
        return i32_as_f32(np.int32(1))  # the smallest positive denormal, for +0.0 and -0.0
    b = f32_as_i32(t)
    return i32_as_f32(b + np.int32(1) if t > 0 else b - np.int32(1))


@njit(nogil=True, cache=True)
def _keep_largest(keys, m, kk):
    """keys[:m] (m > kk) -> keys[:kk] hold the kk largest; -> the smallest value among them."""
    _move_largest(keys, 0, m, kk)
    low = keys[0]
    for i in range(1, kk):
        low = min(low, keys[i])
    return _value_of_key(low)


@njit(nogil=True, cache=True)
def _fused_rows(x, brows, btable, mask, qa, lengths, k, lo, hi, positions, alpha_sel, lse, want_lse):
    """Candidates lo..hi-1 of the flattened (b, c) range: see the module docstring."""
    B, L, _ = x.shape
    C, A, D1 = qa.shape[1], qa.shape[2], qa.shape[3]
    dk = D1 - 1
    kmax = min(k, L)
    cap = max(4 * kmax, 64)  # survivors held per row before a quickselect raises its threshold
    nmax = min(C, hi - lo, CAND_BLOCK)
    width = min(L, max(FIRST, CHUNK))
    kbuf = np.empty((A, D1, width), np.float32)  # the current block's keys, transposed, + bias row
    buf = np.empty(width + MASK_LANES, np.float32)  # two rows' alpha over the block
    bufr = np.empty(width + MASK_LANES, np.float32)
    surv = np.empty((nmax * A, cap + CHUNK), np.int64)  # per row: its survivors' order keys
    cnt = np.zeros(nmax * A, np.int64)
    cut = np.empty(nmax * A, np.float32)  # per row: next_up(threshold), for the >= compare
    run_max = np.empty(nmax * A, np.float32)
    run_sum = np.empty(nmax * A, np.float64)
    gbuf = np.empty(2 * kmax + 1, np.float32)  # workspaces of cpu_gsu._row_topk
    mono = np.empty(2 * kmax + 1, np.int32)
    acc = np.empty(2 * kmax + 1, np.float32)
    keys = np.empty(width + 1, np.int64)
    ready = np.zeros(A, np.int64)
    stamp = np.full(L + 1, -1, np.int64)  # stamp[p] == r: position p already in row r's union
    r = lo
    while r < hi:
        b, c0 = r // C, r % C
        nc = min(C - c0, hi - r, CAND_BLOCK)  # candidates c0..c0+nc-1 of user b share the passes
        xb, rb, mb = x[b], brows[:, b], mask[b]
        n = min(L, lengths[b])
        kk = min(k, n)
        first = min(n, FIRST)
        _load_rows(xb, rb, btable, mb, A, dk, None, 0, first, kbuf)
        for a in range(A):  # the first behaviors, two candidates at a time
            for ci in range(0, nc, 2):
                cj = min(ci + 1, nc - 1)  # the pair's second candidate (the first again at an odd end)
                _alpha_pair(kbuf[a], qa[b, c0 + ci, a], qa[b, c0 + cj, a], first, buf, bufr)
                for t in range(1 if cj == ci else 2):
                    row, x_ = (ci * A + a, buf) if t == 0 else (cj * A + a, bufr)
                    cnt[row], cut[row], run_max[row], run_sum[row] = _rank_first(
                        x_, first, kk, gbuf, mono, keys, surv[row], acc, want_lse)
        for o in range(first, n, CHUNK):
            e = min(n, o + CHUNK)
            m = e - o
            _load_rows(xb, rb, btable, mb, A, dk, None, o, m, kbuf)
            for a in range(A):
                for ci in range(0, nc, 2):
                    cj = min(ci + 1, nc - 1)
                    _alpha_pair(kbuf[a], qa[b, c0 + ci, a], qa[b, c0 + cj, a], m, buf, bufr)
                    for t in range(1 if cj == ci else 2):
                        row, x_ = (ci * A + a, buf) if t == 0 else (cj * A + a, bufr)
                        cnt[row], cut[row] = _keep_above(x_, m, o, cut[row], surv[row], cnt[row], cap, kk)
                        if want_lse:
                            mx = x_[:m].max()
                            if mx > run_max[row]:
                                if run_max[row] > NEG_INF:
                                    run_sum[row] *= math.exp(run_max[row] - mx)
                                run_max[row] = mx
                            if run_max[row] > NEG_INF:
                                run_sum[row] += _chunk_sum_exp(x_, m, run_max[row])
        for ci in range(nc):
            c = c0 + ci
            if want_lse:
                for a in range(A):
                    row = ci * A + a
                    lse[b, c, a] = (np.float32(run_max[row] + np.log(run_sum[row]))
                                    if run_max[row] > NEG_INF else np.float32(0.0))
            got = _round_robin(surv, cnt, ci * A, A, kk, k, ready, stamp, b * C + c, positions[b, c])
            # alpha of every head at the union: the selected rows gathered into a block, the same loop
            _load_rows(xb, rb, btable, mb, A, dk, positions[b, c], 0, got, kbuf)
            for a in range(A):
                _alpha_pair(kbuf[a], qa[b, c, a], qa[b, c, a], got, buf, bufr)
                alpha_sel[b, c, a, :got] = buf[:got]
            for j in range(got, k):
                positions[b, c, j] = -1
                for a2 in range(A):
                    alpha_sel[b, c, a2, j] = 0.0
        r += nc


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _chunk_sum_exp(buf, m, mx):
    """sum of exp(buf[:m] - mx) in float32 (vectorised: reassociation allowed), float64 result."""
    s = np.float32(0.0)
    for j in range(m):
        s += _exp_small(buf[j] - mx)
    return np.float64(s)


def select_fused_cpu(proj: torch.Tensor, bias_rows: torch.Tensor, bias_table: torch.Tensor, seq_mask: torch.Tensor,
                     queries_aug: torch.Tensor, lengths: torch.Tensor, k: int, want_lse: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """See the module docstring. The (b, c) rows are split over twin.kernels.cpu_threads."""
    B, L, _ = proj.shape
    C, A = queries_aug.shape[1], queries_aug.shape[2]
    proj = proj.detach().contiguous()
    x = (proj.view(torch.int16) if proj.dtype == torch.float16 else proj.float()).numpy()
    rows = bias_rows.contiguous().numpy()
    table = bias_table.detach().to(torch.float32).contiguous().numpy()
    mask = seq_mask.contiguous().numpy()
    qa = queries_aug.detach().contiguous().numpy()
    n = lengths.to(torch.int64).contiguous().numpy()
    positions = np.empty((B, C, k), np.int64)
    alpha_sel = np.empty((B, C, A, k), np.float32)
    lse = np.empty((B, C, A) if want_lse else (1, 1, 1), np.float32)
    cpu_threads.split(B * C, MIN_ROWS_PER_THREAD, lambda lo, hi: _fused_rows(
        x, rows, table, mask, qa, n, k, lo, hi, positions, alpha_sel, lse, want_lse))
    return (torch.from_numpy(positions), torch.from_numpy(alpha_sel),
            torch.from_numpy(lse) if want_lse else None)


def alpha_reference(proj: torch.Tensor, bias_rows: torch.Tensor, bias_table: torch.Tensor, seq_mask: torch.Tensor,
                    queries_aug: torch.Tensor) -> torch.Tensor:
    """The alpha the fused kernel ranks, materialised with numpy term by term (tests): the inputs of
    select_fused_cpu -> alpha [B, A, C, L] float32."""
    B, L, _ = proj.shape
    A, D1 = queries_aug.shape[2], queries_aug.shape[3]
    bias = bias_table[bias_rows[0]]  # [B, L, A], the J terms added in order
    for j in range(1, bias_rows.shape[0]):
        bias = bias + bias_table[bias_rows[j]]
    bias = bias.masked_fill(~seq_mask[:, :, None], float("-inf")).permute(0, 2, 1)  # [B, A, L]
    keys = proj[..., :A * (D1 - 1)].float().unflatten(-1, (A, D1 - 1)).permute(0, 2, 3, 1)  # [B, A, d_k, L]
    kt = torch.cat([keys, bias[:, :, None]], 2).numpy()  # [B, A, d_k + 1, L]
    q = queries_aug.permute(0, 2, 1, 3).numpy()  # [B, A, C, d_k + 1]
    acc = np.zeros((B, A, q.shape[2], L), np.float32)
    for d in range(D1):
        acc = acc + q[:, :, :, d, None] * kt[:, :, None, d, :]
    return torch.from_numpy(acc)


def compile_now() -> None:
    """Compile (or load from numba's on-disk cache) the specialisations the serving path uses."""
    g = torch.Generator().manual_seed(0)
    rows, table = torch.zeros(2, 1, 300, dtype=torch.int64), torch.zeros(3, 2)
    mask = torch.ones(1, 300, dtype=torch.bool)
    q = augment_queries(torch.randn(1, 2, 2, 4, generator=g))
    for proj in (torch.randn(1, 300, 16, generator=g).half(), torch.randn(1, 300, 16, generator=g)):
        for want_lse in (False, True):
            select_fused_cpu(proj, rows, table, mask, q, torch.tensor([300]), 100, want_lse)
