"""Machinery for speed behind `twin.attention`: the CP-GSU selection kernels and the CPU thread split.

`select(alpha, lengths, k, want_lse)` ranks a materialised alpha: float32 CPU alpha goes to the
compiled kernel (`cpu_gsu`), anything else (CUDA, half precision) to the torch ops (`torch_gsu`). Both
return the same positions, alpha at them and full-sequence log-sum-exp; tests pin them to each other
and to a plain Python reference. `select_fused(proj, bias_table, cross_rows, ...)` is the CPU serving path:
alpha computed and ranked block by block from the cached projections, never written (`cpu_fused_gsu`);
`esu(...)` the CPU serving ESU up to its last projection (`cpu_esu`); `cross_rows(...)` the cross
features' table rows and bias that both read (`cpu_cross`).
"""
from __future__ import annotations

import torch

from twin.config import FeatureSchema
from twin.kernels.torch_gsu import select_torch


def select(alpha: torch.Tensor, lengths: torch.Tensor, k: int, want_lse: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """alpha [B, A, C, L] (-inf at padding), lengths [B] (valid behaviors lie before lengths[b])
    -> positions [B, C, k] int64 (-1 = none), alpha_sel [B, C, A, k], lse [B, C, A] or None."""
    if alpha.device.type == "cpu" and alpha.dtype == torch.float32:
        from twin.kernels.cpu_gsu import select_cpu  # numba: imported (and compiled) on first use

        return select_cpu(alpha, lengths, k, want_lse)
    return select_torch(alpha, k, want_lse)


def fused_applies(proj: torch.Tensor, query_dtype: torch.dtype) -> bool:
    """Whether select_fused and esu serve these inputs: CPU projections in float16 or float32, float32
    queries, no autograd."""
    return (proj.device.type == "cpu" and query_dtype == torch.float32 and not torch.is_grad_enabled()
            and proj.dtype in (torch.float16, torch.float32))


def cross_rows(schema: FeatureSchema, seq_cross: torch.Tensor, seq_ts: torch.Tensor, now: torch.Tensor,
               bias_table: torch.Tensor | None = None, seq_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cross features' stacked table rows [J, B, L] (tables.stack_rows of features.cross_ids) and,
    with bias_table [R, A] and seq_mask [B, L], the cross bias [B, A, L] (-inf at padding), in one
    compiled pass over the behaviors (cpu_cross)."""
    from twin.kernels.cpu_cross import CrossSpec, cross_rows_cpu

    return cross_rows_cpu(CrossSpec.of(schema), seq_cross, seq_ts, now, bias_table, seq_mask)


def select_fused(proj: torch.Tensor, bias_table: torch.Tensor, cross_rows: torch.Tensor,
                 seq_mask: torch.Tensor, queries: torch.Tensor, lengths: torch.Tensor, k: int, want_lse: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """alpha and the selection in one compiled CPU pass that never writes alpha (cpu_fused_gsu), the
    cross bias summed inside it from the stacked per-feature table: proj [B, L, D] cached projections
    (keys = the first A*d_k columns), bias_table [R, A] (tables.stack_tables of the J bias tables,
    side_by_side=False), cross_rows [J, B, L] (its row ids: cross_rows() or tables.stack_rows),
    seq_mask [B, L], queries [B, C, A, d_k], lengths [B] -> as select()."""
    from twin.kernels.cpu_fused_gsu import augment_queries, select_fused_cpu

    return select_fused_cpu(proj, cross_rows, bias_table, seq_mask, augment_queries(queries), lengths, k, want_lse)


def esu(proj: torch.Tensor, col0: int, d_v: int, positions: torch.Tensor, alpha_sel: torch.Tensor,
        cross_tables: list[torch.Tensor], cross_rows: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ESU's softmax, evidence and pooled sums in one CPU pass (cpu_esu): proj [B, L, D] (inherent
    values from column col0), positions [B, C, k], alpha_sel [B, C, A, k], the J cross embedding tables
    and cross_rows [J, B, L] (tables.stack_rows of their ids) -> weights [B, C, A, k], heads_inh
    [B, C, A, d_v], pooled_cross [B, C, A, cx], evidence [B, C, A]."""
    from twin.kernels.cpu_esu import esu_cpu
    from twin.kernels.tables import stack_tables

    return esu_cpu(proj, col0, d_v, positions, alpha_sel, cross_rows, stack_tables(cross_tables, side_by_side=True))


def compile_now() -> None:
    """Compile (or load from numba's on-disk cache) every CPU kernel's serving specialisations, e.g. at
    image build time, so that a service's first request does not pay the compile (~10 s each)."""
    from twin.kernels import cpu_cross, cpu_fused_gsu, cpu_gsu

    cpu_gsu.compile_now()
    cpu_fused_gsu.compile_now()
    cpu_cross.compile_now()
    for proj in (torch.zeros(1, 10, 16, dtype=torch.float16), torch.zeros(1, 10, 16)):
        esu(proj, 8, 2, torch.zeros(1, 2, 3, dtype=torch.int64), torch.zeros(1, 2, 4, 3), [torch.zeros(2, 3)],
            torch.zeros(1, 1, 10, dtype=torch.int64))
