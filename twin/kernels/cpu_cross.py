"""The cross features' table rows of every behavior in one compiled pass (CPU serving).

Contract (`cross_rows_cpu(spec, seq_cross, seq_ts, now)`): seq_cross [B, L, J_s] float32 stored cross
values, seq_ts [B, L] int64 ms, now [B] int64 ms -> rows [J, B, L] int64, equal to
`twin.kernels.tables.stack_rows(twin.features.cross_ids(schema, ...), vocab sizes)`: feature j's
embedding row id (`twin.features.feature_ids`: bucketized with right=True, or hashed with Python's
modulo) plus the rows of the features before it in the stacked tables. Tests pin the two, boundaries,
ages from the future and values far outside int64 included (torch turns those into INT64_MIN on x86;
so does this).

Why: with torch ops this is ~12 passes over [B, L] (a float64 copy and a bucketize per feature, the
age's subtraction, clamp and division, the offsets, a stack) and then the bias's gathers, sum, mask
and permutation: at W1 (L = 10,000, the synthetic schema's 3 cross features) 0.32 + 0.22 + 0.21 ms
against 0.33 ms for rows and bias here; a whole materialising `TwinCTR.select` went 7.61 -> 7.27 and
8.47 -> 8.10 ms in two in-process A/B runs (2-core AMD EPYC dev box, 2026-12-03; docs/benchmarks.md).
The alpha GEMM adds this bias (`twin.kernels.cpu_alpha`); the fused kernel and the ESU read the rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from twin.config import FeatureSchema
from twin.features import MS_PER_HOUR

AGE = -1  # col of the derived age feature
INT64_MIN = np.int64(-2**63)
TWO_63 = 2.0 ** 63
NEG_INF = np.float32(-np.inf)


@dataclass(frozen=True)
class CrossSpec:
    """The schema's cross features as arrays numba reads (one entry per feature, schema.cross order)."""

    col: np.ndarray     # int64 [J]: column of seq_cross, AGE for the derived age
    bounds: np.ndarray  # float64 [sum n_j]: every feature's boundaries, one after another
    start: np.ndarray   # int64 [J + 1]: feature j's boundaries are bounds[start[j]:start[j + 1]]
    vocab: np.ndarray   # int64 [J]
    offset: np.ndarray  # int64 [J]: rows of the features before j in the stacked tables

    @staticmethod
    @functools.lru_cache(maxsize=64)  # schemas are frozen: one spec per model's schema
    def of(schema: FeatureSchema) -> "CrossSpec":
        col, j = [], 0
        for s in schema.cross:
            col.append(AGE if s.source == "age_hours" else j)
            j += s.source != "age_hours"
        n = [len(s.boundaries) for s in schema.cross]
        vocab = [s.vocab for s in schema.cross]
        return CrossSpec(np.array(col, np.int64),
                         np.array([b for s in schema.cross for b in s.boundaries], np.float64),
                         np.cumsum([0, *n]).astype(np.int64), np.array(vocab, np.int64),
                         np.cumsum([0, *vocab[:-1]]).astype(np.int64))


@njit(inline="always")
def _bucket(bounds, lo, hi, v):
    """torch.bucketize(v, bounds[lo:hi], right=True): how many boundaries are <= v (NaN: all). The
    boundaries are sorted and few (buckets: ~10), so a branch-free count beats a bisection, whose
    branches mispredict (rows + bias at W1: 0.65 ms with a bisection, 0.33 ms this way)."""
    if v != v:
        return np.int64(hi - lo)
    n = np.int64(0)
    for j in range(lo, hi):
        n += bounds[j] <= v
    return n


@njit(inline="always")
def _hashed(v, vocab):
    """torch: raw.to(int64) % vocab, the conversion as x86 does it (INT64_MIN outside int64, NaN too)."""
    i = np.int64(v) if -TWO_63 <= v < TWO_63 else INT64_MIN
    return i % vocab  # numba follows Python: the result has the sign of vocab


@njit(nogil=True, cache=True)
def _cross_rows(cross, ts, now, col, bounds, start, vocab, offset, table, mask, out, bias):
    """out [J, B, L] = the rows; with a bias table [R, A] (R > 0) also bias [B, A, L] = sum_j
    table[out[j, b, i]], summed in j order as TwinCTR._bias_from_tables sums them, -inf where mask is False."""
    B, L = ts.shape
    J, A = col.shape[0], table.shape[1]
    for f in range(J):  # feature by feature: the loops over behaviors have no branch to mispredict
        lo, hi, o = start[f], start[f + 1], offset[f]
        for b in range(B):
            row = out[f, b]
            for i in range(L):
                if col[f] == AGE:
                    age = now[b] - ts[b, i]
                    v = np.float64(age if age > 0 else 0) / MS_PER_HOUR
                else:
                    v = np.float64(cross[b, i, col[f]])
                row[i] = o + (_bucket(bounds, lo, hi, v) if hi > lo else _hashed(v, vocab[f]))
    if table.shape[0] == 0:
        return
    for b in range(B):
        for i in range(L):
            if not mask[b, i]:
                for a in range(A):
                    bias[b, a, i] = NEG_INF
                continue
            r0 = out[0, b, i]
            for a in range(A):
                s = table[r0, a]
                for f in range(1, J):
                    s = s + table[out[f, b, i], a]
                bias[b, a, i] = s


def cross_rows_cpu(spec: CrossSpec, seq_cross: torch.Tensor, seq_ts: torch.Tensor, now: torch.Tensor,
                   bias_table: torch.Tensor | None = None, seq_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See the module docstring. With bias_table [R, A] (`tables.stack_tables(TwinCTR._cross_bias_tables(),
    side_by_side=False)`) and seq_mask [B, L], also the cross bias [B, A, L] float32, -inf at padding
    (what alpha's GEMM adds: `twin.kernels.cpu_alpha`); else None."""
    B, L = seq_ts.shape
    out = np.empty((spec.col.shape[0], B, L), np.int64)
    if bias_table is None:
        table, mask, bias = np.zeros((0, 1), np.float32), np.ones((1, 1), np.bool_), np.empty((1, 1, 1), np.float32)  # unread
    else:
        table = bias_table.detach().to(torch.float32).contiguous().numpy()
        mask = seq_mask.contiguous().numpy()
        bias = np.empty((B, table.shape[1], L), np.float32)
    _cross_rows(seq_cross.contiguous().numpy(), seq_ts.contiguous().numpy(), now.contiguous().numpy(),
                spec.col, spec.bounds, spec.start, spec.vocab, spec.offset, table, mask, out, bias)
    return torch.from_numpy(out), (torch.from_numpy(bias) if bias_table is not None else None)


def compile_now() -> None:
    """Compile (or load from numba's on-disk cache) the specialisations the serving path uses."""
    from twin.config import FeatureSpec

    schema = FeatureSchema(inherent=(FeatureSpec("item_id", 10, 2),),
                           cross=(FeatureSpec("age", 3, 2, (1.0, 2.0), "age_hours"), FeatureSpec("v", 4, 2)))
    cross, ts, now = torch.zeros(1, 5, 1), torch.zeros(1, 5, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    cross_rows_cpu(CrossSpec.of(schema), cross, ts, now)
    cross_rows_cpu(CrossSpec.of(schema), cross, ts, now, torch.zeros(7, 2), torch.ones(1, 5, dtype=torch.bool))
