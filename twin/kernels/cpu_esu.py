"""The ESU's softmax, evidence and pooled sums on the CPU in one pass over the selected behaviors,
reading their inherent values straight from the cached projections.

Contract (`esu_cpu`), per user b, candidate c, head a, over the k selected positions (-1 = none):
  proj      [B, L, D] float16 (as the cache holds it) or float32; head a's inherent value of behavior p
            is proj[b, p, col0 + a d_v : col0 + (a+1) d_v] (K_h W^v_{h,a}, cached by the projector);
  positions [B, C, k] int64;  alpha_sel [B, C, A, k] float32;
  cross_ids [J, B, L] int64 row ids into cross_table [R, cx] float32: behavior p's cross embedding K_c
            is sum_j cross_table[cross_ids[j, b, p]] (`twin.kernels.tables` builds both:
            feature j's table sits in its own rows and columns, so the sum is the concatenation);
returns weights [B, C, A, k] (softmax of alpha over the valid positions, 0 elsewhere and for an empty
row), heads_inh [B, C, A, d_v] = sum_k w K_h W^v_{h,a}, pooled_cross [B, C, A, cx] = sum_k w K_c, and
evidence [B, C, A] = log sum_k exp(alpha) (0 for an empty row): what `twin.attention.esu_pool` computes
before `esu_heads`, to float32 rounding (tests pin them).

Why: with torch ops the ESU of one W1 request is ~40 small ops (gathers, a float16 -> float32 copy,
the permutation copy an einsum needs, masked softmax, two einsums, logsumexp): ~3 ms of a 4.5 ms ESU
stage on the dev box (torch profiler), most of it the two copies of [C, k, A, d_v]. Here each selected
row is read once: `make bench` part esu_kernel, 0.67 ms p50 at W1, 1.95 ms at W3 (2026-12-02 16:49 UTC).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from twin.kernels import cpu_threads
from twin.kernels.cpu_gsu import _exp_small
from twin.kernels.simd import to_f32

MIN_ROWS_PER_THREAD = 32
NEG_INF = np.float32(-np.inf)


@njit(nogil=True, cache=True)
def _esu_rows(x, col0, dv, positions, alpha_sel, cross_ids, cross_table, lo, hi, weights, heads, pooled, evidence):
    """Rows lo..hi-1 of the flattened (b, c). Each selected row is converted once into a float32
    buffer and accumulated with the heads' weights spread over its lanes: flat loops that vectorise."""
    B, C, A, k = alpha_sel.shape
    J, cx = cross_ids.shape[0], cross_table.shape[1]
    W = A * dv
    vals = np.empty(W, np.float32)   # one selected row's inherent values, all heads
    wts = np.empty(W, np.float32)    # its weight per head, repeated over that head's d_v lanes
    acc = np.empty(W, np.float32)
    emb = np.empty(cx, np.float32)   # its cross embedding
    acc_x = np.empty(A * cx, np.float32)
    for r in range(lo, hi):
        b, c = r // C, r % C
        pos = positions[b, c]
        for a in range(A):  # softmax over the valid positions, and its log normaliser
            al, w = alpha_sel[b, c, a], weights[b, c, a]
            mx = NEG_INF
            for j in range(k):
                if pos[j] >= 0 and al[j] > mx:
                    mx = al[j]
            if mx == NEG_INF:
                w[:] = 0.0
                evidence[b, c, a] = 0.0
                continue
            total = np.float32(0.0)
            for j in range(k):  # branch-free, so that it vectorises; exp to ~1 ulp (cpu_gsu._exp_small)
                e = _exp_small(al[j] - mx) * np.float32(pos[j] >= 0)
                w[j] = e
                total += e
            inv = np.float32(1.0) / total
            for j in range(k):
                w[j] = w[j] * inv
            evidence[b, c, a] = mx + np.float32(math.log(total))
        acc[:] = 0.0
        acc_x[:] = 0.0
        for j in range(k):
            p = pos[j]
            if p < 0:
                continue
            row = x[b, p, col0:col0 + W]
            for i in range(W):
                vals[i] = to_f32(row[i])
            emb[:] = 0.0
            for f in range(J):  # direct indexing: a view per row would cost an atomic refcount pair
                rid = cross_ids[f, b, p]
                for i in range(cx):
                    emb[i] += cross_table[rid, i]
            for a in range(A):
                wa = weights[b, c, a, j]
                for d in range(dv):
                    wts[a * dv + d] = wa
                for i in range(cx):
                    acc_x[a * cx + i] += wa * emb[i]
            for i in range(W):
                acc[i] += wts[i] * vals[i]
        for a in range(A):
            for i in range(cx):
                pooled[b, c, a, i] = acc_x[a * cx + i]
        for a in range(A):
            for d in range(dv):
                heads[b, c, a, d] = acc[a * dv + d]


def esu_cpu(proj: torch.Tensor, col0: int, d_v: int, positions: torch.Tensor, alpha_sel: torch.Tensor,
            cross_ids: torch.Tensor, cross_table: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See the module docstring. The (b, c) rows are split over twin.kernels.cpu_threads."""
    B, C, A, k = alpha_sel.shape
    proj = proj.detach().contiguous()
    x = (proj.view(torch.int16) if proj.dtype == torch.float16 else proj.float()).numpy()
    pos = positions.contiguous().numpy()
    al = alpha_sel.detach().to(torch.float32).contiguous().numpy()
    ids = cross_ids.contiguous().numpy()
    table = cross_table.detach().to(torch.float32).contiguous().numpy()
    weights = np.empty((B, C, A, k), np.float32)
    heads = np.empty((B, C, A, d_v), np.float32)
    pooled = np.empty((B, C, A, table.shape[1]), np.float32)
    evidence = np.empty((B, C, A), np.float32)
    cpu_threads.split(B * C, MIN_ROWS_PER_THREAD, lambda lo, hi: _esu_rows(
        x, col0, d_v, pos, al, ids, table, lo, hi, weights, heads, pooled, evidence))
    return tuple(torch.from_numpy(a) for a in (weights, heads, pooled, evidence))  # type: ignore[return-value]
