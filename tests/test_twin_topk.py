"""The CPU two-level top-k against the plain torch path and the Python reference, at W1 size."""
from __future__ import annotations

import pytest
import torch

from tests.test_twin_model import reference_round_robin
from twin.attention import _topk_cpu, _topk_torch, round_robin_topk
from twin.cpu_threads import set_cpu_threads


@pytest.mark.parametrize("L", [10_000, 10_007])  # 10,007: tail columns outside the groups
@pytest.mark.parametrize("kind", ["ties", "continuous", "signed_zeros", "few_valid"])
def test_cpu_topk_equals_torch_topk_at_w1_size(kind, L):
    g = torch.Generator().manual_seed(3)
    R, kk = 40, 100
    if kind == "ties":  # repeated items tie often: a handful of distinct values
        x = torch.randint(0, 7, (R, L), generator=g).float()
    elif kind == "continuous":
        x = torch.randn(R, L, generator=g)
    elif kind == "few_valid":  # fewer valid entries than kk in some rows: the threshold is -inf there
        x = torch.randn(R, L, generator=g)
        x[:, 60:] = float("-inf")
        x[::2, 60:] = torch.randn(R // 2, L - 60, generator=g)
    else:
        x = torch.where(torch.rand(R, L, generator=g) < 0.5, torch.tensor(0.0), torch.tensor(-0.0))
        x[:, ::97] = 1.0
    x[:5, 3_000:] = float("-inf")  # padded rows
    v_cpu, i_cpu = _topk_cpu(x, kk)
    v_ref, i_ref = _topk_torch(x, kk)
    assert torch.equal(i_cpu, i_ref)
    assert torch.equal(v_cpu, v_ref)


def test_round_robin_at_w1_size_with_ties_matches_reference():
    g = torch.Generator().manual_seed(5)
    alpha = torch.randint(0, 20, (1, 4, 2, 10_000), generator=g).float()
    alpha[..., 9_000:] = float("-inf")
    positions, valid = round_robin_topk(alpha, 100)
    for c in range(2):
        assert positions[0, c][valid[0, c]].tolist() == reference_round_robin(alpha[0, :, c], 100)


@pytest.mark.parametrize("threads", [2, 3])
def test_row_parallel_topk_equals_serial(threads):
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 50, (4 * 2 * 100, 10_000), generator=g).float()  # B=2 at W1, ties everywhere
    x[300:, 7_000:] = float("-inf")
    serial = _topk_cpu(x, 100)
    set_cpu_threads(threads)
    try:
        parallel = _topk_cpu(x, 100)
        small = _topk_cpu(x[:100], 100)  # too few rows to split: runs serially
    finally:
        set_cpu_threads(1)
    assert torch.equal(parallel[1], serial[1]) and torch.equal(parallel[0], serial[0])
    assert torch.equal(small[1], serial[1][:100])


def test_cpu_threads_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        set_cpu_threads(0)


def test_rows_with_many_groups_tied_at_the_threshold_keep_the_earliest_ties():
    # A user who repeated one item: hundreds of equal alphas around the cut, in far-apart positions.
    # Rows alternate between that (the tied-groups path) and plain noise (the usual path).
    g = torch.Generator().manual_seed(21)
    R, L, kk = 16, 10_000, 100
    x = torch.randn(R, L, generator=g)
    for r in range(0, R, 2):
        x[r] = torch.randn(L, generator=g) - 10.0
        tied = torch.randperm(L, generator=g)[:700]
        x[r, tied] = 1.5  # 700 ties, most outside any group that holds a larger value
        x[r, torch.randperm(L, generator=g)[:30]] = 2.0 + torch.rand(30, generator=g)  # 30 above the ties
    v_cpu, i_cpu = _topk_cpu(x, kk)
    v_ref, i_ref = _topk_torch(x, kk)
    assert torch.equal(i_cpu, i_ref) and torch.equal(v_cpu, v_ref)
    tied_kept = i_cpu[0][v_cpu[0] == 1.5]
    assert tied_kept.numel() == 70 and torch.equal(tied_kept, tied_kept.sort().values)  # earliest first
