"""The ESU's weighted sum of the inherent values, read straight from the cached projections.

Contract (`pool_values_cpu`): proj [B, L, D] float16 (as the cache holds it) or float32, whose columns
col0 + a d_v + (0..d_v-1) hold head a's inherent value K_h W^v_{h,a}; positions [B, C, k] int64 (-1 =
none); weights [B, C, A, k] float32 -> [B, C, A, d_v] float32, sum_j weights[b, c, a, j] *
proj[b, positions[b, c, j], col0 + a d_v + :], summed in j order (the einsum of `esu_pool` up to
float32 rounding).

Why: done with torch ops, the gather, the float16 -> float32 conversion and the permutation that the
einsum needs are three copies of [C, k, A, d_v] (2.5 MB at W1) and cost ~3 ms of a ~4.5 ms ESU stage
on the dev box; this loop reads the selected rows once (W1: ~0.2 ms, `make bench` part "esu_kernel").
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from twin.kernels import cpu_threads
from twin.kernels.simd import to_f32

MIN_ROWS_PER_THREAD = 32


@njit(nogil=True, cache=True)
def _pool_rows(x, col0, dv, positions, weights, lo, hi, out):
    """Rows lo..hi-1 of the flattened (b, c). Each selected row is converted once into a float32 buffer
    and accumulated with the heads' weights spread over its lanes: flat loops over A d_v that
    vectorise (measured at W1: 0.64 -> 0.17 ms against a loop per head and coordinate)."""
    B, C, A, k = weights.shape
    W = A * dv
    vals = np.empty(W, np.float32)  # one selected row's values, all heads
    wts = np.empty(W, np.float32)   # its weight per head, repeated over that head's d_v lanes
    acc = np.empty(W, np.float32)
    for r in range(lo, hi):
        b, c = r // C, r % C
        acc[:] = 0.0
        for j in range(k):
            p = positions[b, c, j]
            if p < 0:
                continue
            row = x[b, p, col0:col0 + W]
            for i in range(W):
                vals[i] = to_f32(row[i])
            for a in range(A):
                w = weights[b, c, a, j]
                for d in range(dv):
                    wts[a * dv + d] = w
            for i in range(W):
                acc[i] += wts[i] * vals[i]
        for a in range(A):
            for d in range(dv):
                out[b, c, a, d] = acc[a * dv + d]


def pool_values_cpu(proj: torch.Tensor, col0: int, d_v: int, positions: torch.Tensor, weights: torch.Tensor
                    ) -> torch.Tensor:
    """See the module docstring. The (b, c) rows are split over twin.kernels.cpu_threads."""
    B, C, A, k = weights.shape
    proj = proj.contiguous()
    x = (proj.view(torch.int16) if proj.dtype == torch.float16 else proj.float()).numpy()
    pos = positions.contiguous().numpy()
    w = weights.to(torch.float32).contiguous().numpy()
    out = np.empty((B, C, A, d_v), np.float32)
    cpu_threads.split(B * C, MIN_ROWS_PER_THREAD, lambda lo, hi: _pool_rows(x, col0, d_v, pos, w, lo, hi, out))
    return torch.from_numpy(out)
