"""Several small per-feature tables as one table and one set of row ids, the form the CPU kernels read
(numba takes arrays, not lists of them): cross features are buckets, so their tables have tens of rows."""
from __future__ import annotations

import torch


def stack_tables(tables: list[torch.Tensor], ids: list[torch.Tensor], side_by_side: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """J tables [V_j, e_j] and their ids J x [B, L] -> (row ids [J, B, L] into one table, that table).
    side_by_side: [sum V_j, sum e_j], table j in its own rows and columns (zeros elsewhere), so the sum
    of a behavior's J rows is the concatenation of its J embeddings (the ESU's cross embeddings K_c);
    else [sum V_j, e] (all e_j equal), so that sum is the sum of the J rows (the cross bias's terms).
    No table (J = 0): one zero row, so the sum is 0."""
    if not tables:
        B, L = ids[0].shape if ids else (1, 1)
        return torch.zeros(1, B, L, dtype=torch.int64), torch.zeros(1, 1)
    V = [t.shape[0] for t in tables]
    E = [t.shape[1] for t in tables]
    table = torch.zeros(sum(V), sum(E) if side_by_side else E[0], dtype=torch.float32)
    r0 = c0 = 0
    rows = []
    for t, i, v, e in zip(tables, ids, V, E):
        table[r0:r0 + v, c0:c0 + e] = t.detach()
        rows.append(i + r0)
        r0, c0 = r0 + v, c0 + (e if side_by_side else 0)
    return torch.stack(rows), table
