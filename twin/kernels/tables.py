"""Several small per-feature tables as one table and one set of row ids, the form the CPU kernels read
(numba takes arrays, not lists of them): cross features are buckets, so their tables have tens of rows.
Both stackings put table j's rows after those of tables 0..j-1, so one set of row ids (`stack_rows`)
serves the cross-bias table of the GSU and the embedding table of the ESU."""
from __future__ import annotations

import torch


def stack_rows(ids: list[torch.Tensor], vocab_sizes: list[int]) -> torch.Tensor:
    """J id tensors [B, L] (feature j's ids in [0, vocab_sizes[j])) -> row ids [J, B, L] into a stacked
    table. No feature (J = 0): one row of zeros, pointing at the zero row `stack_tables` then holds."""
    if not ids:
        return torch.zeros(1, 1, 1, dtype=torch.int64)
    offsets = [0]
    for v in vocab_sizes[:-1]:
        offsets.append(offsets[-1] + v)
    return torch.stack([i + o for i, o in zip(ids, offsets)])


def stack_tables(tables: list[torch.Tensor], side_by_side: bool) -> torch.Tensor:
    """J tables [V_j, e_j] -> one table, in the row order `stack_rows` indexes.
    side_by_side: [sum V_j, sum e_j], table j in its own rows and columns (zeros elsewhere), so the sum
    of a behavior's J rows is the concatenation of its J embeddings (the ESU's cross embeddings K_c);
    else [sum V_j, e] (all e_j equal), so that sum is the sum of the J rows (the cross bias's terms)."""
    if not tables:
        return torch.zeros(1, 1)
    V = [t.shape[0] for t in tables]
    E = [t.shape[1] for t in tables]
    table = torch.zeros(sum(V), sum(E) if side_by_side else E[0], dtype=torch.float32)
    r0 = c0 = 0
    for t, v, e in zip(tables, V, E):
        table[r0:r0 + v, c0:c0 + e] = t.detach()
        r0, c0 = r0 + v, c0 + (e if side_by_side else 0)
    return table
