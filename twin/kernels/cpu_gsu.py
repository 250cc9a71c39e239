"""CP-GSU on the CPU as one compiled pass per candidate: per-head top-k, the round-robin union, alpha
at the union, and (optionally) the log-sum-exp of alpha over the whole sequence.

Contract (`select_cpu`): alpha [B, A, C, L] float32 C-contiguous (-inf at padded behaviors), lengths
[B] int64 (user b's behaviors lie in positions < lengths[b]; -inf inside that prefix is padding too).
Returns exactly what `twin.kernels.torch_gsu.select_torch` returns on the same alpha:
  positions [B, C, k] int64: the union in round-robin order (rank 1 of heads 0..A-1, rank 2, ...),
            -1 after the last one when fewer than k valid behaviors exist;
  alpha_sel [B, C, A, k] float32: alpha of every head at those positions (0 where -1);
  lse       [B, C, A] float32 or None: log sum_l exp(alpha[b, a, c, l]) over the valid l (0 when none).
Each head's ranking is value descending, then position ascending (ties keep the newer behavior), the
same rule as `torch.topk` followed by a stable sort; tests pin the two against a plain reference.

How one row x = alpha[b, a, c, :n] is ranked without sorting it (n = 10,000, kk = 100 at W1):
 1. group maxima: the row seen as [s, G] (G = 2 kk groups, group g = columns g, g + G, ...) and
    maximised over s: one vectorised read pass, the only one that touches all n values;
 2. t = the kk-th largest group maximum, or a little below it (a bisection on G = 200 floats). kk
    distinct entries are >= t, so t is a lower bound of the row's kk-th value: exact, not a heuristic;
 3. a compare pass (32 lanes at a time, as a bit mask) keeps the entries >= t: ~1.3 kk of them for
    continuous values, all the tied ones when many equal t (a user who repeated an item);
 4. their (value, position) order keys (one int64 each, unique) are ordered 32 at a time (a
    branch-free quickselect, then an insertion sort) as the round-robin union walks down the ranks:
    it stops at rank ~25 of 100 at W1, so most of the sort is never done.
Measured at W1 (B = 1, C = 100, 4 heads) on one core of the 2-core dev box: see `make bench`
(part "kernels"); the figures and the alternatives tried are in docs/benchmarks.md.

numba compiles these functions on first use (cache=True: once per machine, ~10 s) and runs them
without the GIL, so `twin.kernels.cpu_threads` splits the candidates over plain threads.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from twin.kernels import cpu_threads
from twin.kernels.simd import MASK_LANES, f32_as_i32, ge_mask, i32_as_f32, lowest_bit

NEG_INF = np.float32(-np.inf)
MIN_ROWS_PER_THREAD = 16  # candidates: below this a second thread costs more than it saves
RANK_CHUNK = 32  # survivors ordered at a time (_rank_more)


@njit(inline="always")
def _mono(v):
    """float32 -> int32 of the same order (-0.0 folded into +0.0)."""
    b = f32_as_i32(v)
    if b == np.int32(-2147483648):
        b = np.int32(0)
    return b ^ ((b >> 31) & np.int32(0x7FFFFFFF))


@njit(inline="always")
def _order_key(v, pos):
    """(float32 value, position) -> int64, larger = (value desc, position asc); unique per position.
    -0.0 is folded into +0.0 (they compare equal)."""
    return (np.int64(_mono(v)) << 32) + (np.int64(0xFFFFFFFF) - np.int64(pos))


@njit(inline="always")
def _key_pos(key):
    return np.int64(0xFFFFFFFF) - (key & np.int64(0xFFFFFFFF))


@njit(nogil=True, cache=True)
def _move_largest(a, lo, hi, n):
    """Reorder a[lo:hi] (unique int64 keys, 0 < n < hi - lo) so that a[lo:lo+n] hold its n largest.
    Quickselect with a branch-free Lomuto partition (the data-dependent branch of a Hoare partition
    mispredicts half the time on these keys) and a median-of-three pivot: with >= 3 distinct keys one
    sampled key is above the pivot and one below, so every round shrinks the range."""
    target = lo + n
    while hi - lo >= 3:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi - 1]
        p = max(min(x, y), min(max(x, y), z))
        j = lo
        for i in range(lo, hi):  # a[lo:j] > p, a[j:i] <= p
            v = a[i]
            a[i] = a[j]
            a[j] = v
            j += v > p
        if j > target:
            hi = j
        elif j < target:
            lo = j
        else:
            return
    if hi - lo == 2 and lo < target and a[lo] < a[lo + 1]:
        a[lo], a[lo + 1] = a[lo + 1], a[lo]


@njit(nogil=True, cache=True)
def _sort_desc(a, lo, hi):
    """Insertion sort of a[lo:hi], descending (hi - lo <= RANK_CHUNK: ~n^2/4 moves, no recursion)."""
    for i in range(lo + 1, hi):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] < v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@njit(nogil=True, cache=True)
def _threshold(gbuf, G, kk, mono):
    """A value t with at least kk of gbuf[:G] >= t: the kk-th largest, or a value a little below it.
    Bisection on the order-preserving integers of the floats: each step is one branch-free vectorised
    count over G, ~30x cheaper than a quickselect's data-dependent branches; stops once at most
    kk + kk/8 are >= the probe. mono: int32 workspace of >= G."""
    for g in range(G):
        mono[g] = _mono(gbuf[g])
    lo, hi = np.int64(mono[:G].min()), np.int64(mono[:G].max()) + 1  # count(>= lo) >= kk > count(>= hi)
    slack = kk + kk // 8
    while hi - lo > 1:
        mid = np.int32((lo + hi) >> 1)
        c = 0
        for g in range(G):
            c += mono[g] >= mid
        if c >= kk:
            lo = np.int64(mid)
            if c <= slack:
                break
        else:
            hi = np.int64(mid)
    b = np.int32(lo)
    return i32_as_f32(b ^ ((b >> 31) & np.int32(0x7FFFFFFF)))  # the mapping is its own inverse


@njit(inline="always")
def _append_at_least(x, n, t, o, keys, m):
    """Append to keys[m:] the order keys of the entries of x[:n] that are >= t and valid (> -inf), as
    positions o + i: a 32-lane compare to a bit mask, then one step per set bit. -> the new count."""
    full = n - n % MASK_LANES
    for j0 in range(0, full, MASK_LANES):
        bits = ge_mask(x, j0, t)
        while bits:
            j = j0 + lowest_bit(bits)
            bits &= bits - np.uint64(1)
            v = x[j]
            if v > NEG_INF:
                keys[m] = _order_key(v, o + j)
                m += 1
    for j in range(full, n):
        v = x[j]
        if v >= t and v > NEG_INF:
            keys[m] = _order_key(v, o + j)
            m += 1
    return m


@njit(nogil=True, cache=True)
def _row_topk(x, n, kk, gbuf, mono, keys, top, acc, want_lse):
    """top[:m] = order keys (value desc, position asc) of m <= 2 kk valid entries of x[:n], in no
    particular order, that hold its kk largest; -> (m, row max, lse or 0). gbuf/mono/acc: float32/
    int32/float32 workspaces of >= 2*kk, keys: int64 of >= n. With want_lse the log-sum-exp of x[:n]
    comes out of the same read pass (_lse_in_pass)."""
    G = 2 * kk
    mx = NEG_INF
    lse = np.float32(0.0)
    if n >= 2 * G:
        s = n // G
        body = x[:s * G].reshape(s, G)  # [s, G]: group g = column g
        for g in range(G):
            gbuf[g] = body[0, g]
        m0 = gbuf[:G].max()
        fused = want_lse and m0 > NEG_INF
        if fused:  # exp(x - m0) summed per group lane while the maxima are taken: one read of x
            for g in range(G):
                acc[g] = _exp_small(body[0, g] - m0)
            for j in range(1, s):
                row = body[j]
                for g in range(G):
                    v = row[g]
                    gbuf[g] = np.maximum(v, gbuf[g])
                    acc[g] += _exp_small(v - m0)
        else:
            for j in range(1, s):  # np.maximum on scalars: the loop vectorises to vmaxps
                row = body[j]
                for g in range(G):
                    gbuf[g] = np.maximum(row[g], gbuf[g])
        for g in range(n - s * G):  # the last columns join the first groups: groups only need to be disjoint
            v = x[s * G + g]
            gbuf[g] = np.maximum(v, gbuf[g])
            if fused:
                acc[g] += _exp_small(v - m0)
        mx = gbuf[:G].max()
        if want_lse:
            if fused and mx - m0 <= np.float32(80.0):  # no term overflowed exp's range
                lse = np.float32(m0 + np.log(np.sum(acc[:G].astype(np.float64))))
            else:
                lse = _row_lse(x, n, mx)
        t = _threshold(gbuf, G, kk, mono)
    else:  # too short for the bound to pay: every valid entry is a candidate
        t = NEG_INF
    m = _append_at_least(x, n, t, 0, keys, 0)
    if n < 2 * G:
        for i in range(m):
            v = x[_key_pos(keys[i])]
            mx = v if v > mx else mx
        if want_lse:
            lse = _row_lse(x, n, mx)
    if m > 2 * kk:  # many ties at t: keep the kk largest only (the union never ranks deeper than kk)
        _move_largest(keys, 0, m, kk)
        m = kk
    top[:m] = keys[:m]  # the candidates' keys, not yet ordered: _rank_more orders them on demand
    return m, mx, lse


@njit(nogil=True, cache=True)
def _rank_more(hkeys, ready, m):
    """hkeys[:ready] are ranked (descending); rank the next RANK_CHUNK of hkeys[:m] -> new ready.
    The round-robin union rarely goes deep (rank ~25 of 100 at W1 with 4 heads), so ordering the
    candidates a chunk at a time instead of sorting them all saves most of the sort."""
    n = min(RANK_CHUNK, m - ready)
    if m - ready > n:
        _move_largest(hkeys, ready, m, n)
    _sort_desc(hkeys, ready, ready + n)
    return ready + n


@njit(inline="always")
def _exp_small(d):
    """exp(d) for d <= 88; below -80 (and -inf) it gives exp(-80) ~ 2e-35, which no sum that holds a
    term >= 1 can see, and no float32 denormal (whose arithmetic is ~100x slower on x86). Cody-Waite
    reduction and the Cephes expf polynomial (~1 ulp), written so that LLVM vectorises the loop."""
    d = d if d > np.float32(-80.0) else np.float32(-80.0)
    n = np.floor(d * np.float32(1.44269504) + np.float32(0.5))
    r = d - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * i32_as_f32((np.int32(n) + np.int32(127)) << 23)


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _sum_exp(x, lo, hi, mx):
    """sum of exp(x[lo:hi] - mx) in float32 (vectorised: reassociation allowed)."""
    s = np.float32(0.0)
    for i in range(lo, hi):
        s += _exp_small(x[i] - mx)
    return s


@njit(nogil=True, cache=True)
def _row_lse(x, n, mx):
    """log sum exp over x[:n] given its max; blocks of 256 summed in float32, the blocks in float64."""
    if not mx > NEG_INF:
        return np.float32(0.0)
    total = 0.0
    for lo in range(0, n, 256):
        total += _sum_exp(x, lo, min(n, lo + 256), mx)
    return np.float32(mx + np.log(total))


@njit(nogil=True, cache=True)
def _round_robin(keys, cnt, base, A, kk, k, ready, stamp, r, out):
    """The union: rank 1 of heads 0..A-1, rank 2, ... first occurrences into out[:k] -> how many.
    Head a's candidates are keys[base + a, :cnt[base + a]] (unordered: ranked on demand, _rank_more;
    ready: int64 [A] workspace); stamp[p] == r marks position p as taken (r: this row's unique id)."""
    ready[:] = 0
    got = 0
    for rank in range(kk):
        for a in range(A):
            h = base + a
            if rank < cnt[h] and got < k:
                if rank == ready[a]:
                    ready[a] = _rank_more(keys[h], ready[a], cnt[h])
                p = _key_pos(keys[h, rank])
                if stamp[p] != r:
                    stamp[p] = r
                    out[got] = p
                    got += 1
        if got >= k:
            break
    return got


@njit(nogil=True, cache=True)
def _select_rows(alpha, lengths, k, lo, hi, positions, alpha_sel, lse, want_lse):
    """Candidates lo..hi-1 of the flattened (b, c) range: see the module docstring."""
    B, A, C, L = alpha.shape
    kmax = min(k, L)
    gbuf = np.empty(2 * kmax + 1, np.float32)
    mono = np.empty(2 * kmax + 1, np.int32)
    acc = np.empty(2 * kmax + 1, np.float32)
    keys = np.empty(L + 1, np.int64)
    top = np.empty((A, 2 * kmax + 1), np.int64)  # per head: the candidates' keys (<= 2 kk of them)
    cnt = np.zeros(A, np.int64)
    ready = np.zeros(A, np.int64)  # ranks of head a ordered so far (_rank_more)
    stamp = np.full(L + 1, -1, np.int64)  # stamp[p] == r: position p already in row r's union
    for r in range(lo, hi):
        b, c = r // C, r % C
        n = min(L, lengths[b])
        kk = min(k, n)
        for a in range(A):
            x = alpha[b, a, c]
            if kk > 0:
                cnt[a], mx, row_lse = _row_topk(x, n, kk, gbuf, mono, keys, top[a], acc, want_lse)
            else:
                cnt[a], row_lse = 0, np.float32(0.0)
            if want_lse:
                lse[b, c, a] = row_lse
        got = _round_robin(top, cnt, 0, A, kk, k, ready, stamp, r, positions[b, c])
        for j in range(got):
            for a2 in range(A):
                alpha_sel[b, c, a2, j] = alpha[b, a2, c, positions[b, c, j]]
        for j in range(got, k):
            positions[b, c, j] = -1
            for a2 in range(A):
                alpha_sel[b, c, a2, j] = 0.0


def select_cpu(alpha: torch.Tensor, lengths: torch.Tensor, k: int, full_lse: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """See the module docstring. The (b, c) rows are split over twin.kernels.cpu_threads."""
    B, A, C, L = alpha.shape
    x = alpha.detach().contiguous().numpy()
    n = lengths.to(torch.int64).contiguous().numpy()
    positions = np.empty((B, C, k), np.int64)
    alpha_sel = np.empty((B, C, A, k), np.float32)
    lse = np.empty((B, C, A) if full_lse else (1, 1, 1), np.float32)
    cpu_threads.split(B * C, MIN_ROWS_PER_THREAD,
                      lambda lo, hi: _select_rows(x, n, k, lo, hi, positions, alpha_sel, lse, full_lse))
    return (torch.from_numpy(positions), torch.from_numpy(alpha_sel),
            torch.from_numpy(lse) if full_lse else None)


def compile_now() -> None:
    """Compile (or load from numba's on-disk cache) every specialisation the serving path uses, e.g.
    at image build time, so that a service's first request does not pay the ~15 s compile."""
    x = torch.randn(1, 2, 2, 1_000, generator=torch.Generator().manual_seed(0))
    for want_lse in (False, True):
        select_cpu(x, torch.tensor([1_000]), 100, want_lse)
