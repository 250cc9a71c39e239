"""The CP-GSU kernels (twin.kernels): the compiled CPU kernel and the torch path select exactly what a
plain Python reference selects (per-head ranking by value desc, then position asc; round-robin union),
return alpha at the union and the full-sequence log-sum-exp, on random, tied and short inputs."""
from __future__ import annotations

import math

import pytest
import torch

from twin.kernels import cpu_threads
from twin.kernels.cpu_gsu import select_cpu
from twin.kernels.torch_gsu import select_torch

NEG = float("-inf")


def reference(alpha: torch.Tensor, k: int) -> tuple[list, list, list]:
    """Plain Python over alpha [A, L] of one (user, candidate): -> positions, alpha_sel [A][n], lse [A]."""
    A, L = alpha.shape
    rows = alpha.tolist()
    rankings = [sorted((p for p in range(L) if rows[a][p] > NEG), key=lambda p: (-rows[a][p], p)) for a in range(A)]
    out: list[int] = []
    for r in range(L):
        for a in range(A):
            if r < len(rankings[a]) and rankings[a][r] not in out and len(out) < k:
                out.append(rankings[a][r])
    lse = []
    for a in range(A):
        vals = [v for v in rows[a] if v > NEG]
        m = max(vals) if vals else 0.0
        lse.append(m + math.log(sum(math.exp(v - m) for v in vals)) if vals else 0.0)
    return out, [[rows[a][p] for p in out] for a in range(A)], lse


def make_alpha(kind: str, B: int, A: int, C: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # repeated items tie often: a handful of distinct values
        x = torch.randint(0, 7, (B, A, C, L), generator=g).float()
    elif kind == "signed_zeros":
        x = torch.where(torch.rand(B, A, C, L, generator=g) < 0.5, torch.tensor(0.0), torch.tensor(-0.0))
        x[..., ::97] = 1.0
    elif kind == "heavy_ties":  # hundreds of equal values around the cut, far apart
        x = torch.randn(B, A, C, L, generator=g) - 10.0
        x[..., torch.randperm(L, generator=g)[:max(1, L // 5)]] = 1.5
        few = min(30, L)
        x[..., torch.randperm(L, generator=g)[:few]] = 2.0 + torch.rand(few, generator=g)
    else:
        x = torch.randn(B, A, C, L, generator=g)
    return x


def check(alpha: torch.Tensor, lengths: torch.Tensor, k: int, positions, alpha_sel, lse=None) -> None:
    B, A, C, L = alpha.shape
    for b in range(B):
        for c in range(C):
            pos, sel, want_lse = reference(alpha[b, :, c, :int(lengths[b])], k)
            n = len(pos)
            assert positions[b, c, :n].tolist() == pos
            assert (positions[b, c, n:] == -1).all()
            assert alpha_sel[b, c, :, :n].tolist() == sel
            assert (alpha_sel[b, c, :, n:] == 0).all()
            if lse is not None:
                torch.testing.assert_close(lse[b, c], torch.tensor(want_lse), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["continuous", "ties", "signed_zeros", "heavy_ties"])
@pytest.mark.parametrize("L,k", [(1_500, 20), (1_537, 20), (90, 20), (12, 20), (41, 40)])  # long, tail, short
def test_cpu_kernel_and_torch_path_match_the_reference(kind, L, k):
    B, A, C = 2, 4, 3
    alpha = make_alpha(kind, B, A, C, L, seed=L + k)
    lengths = torch.tensor([L, max(1, L // 3)])
    alpha[1, :, :, int(lengths[1]):] = NEG  # user 1 is padded
    alpha[0, :, 1, ::3] = NEG  # holes inside the valid prefix
    positions, alpha_sel, lse = select_cpu(alpha, lengths, k, True)
    check(alpha, lengths, k, positions, alpha_sel, lse)
    tp, ta, tl = select_torch(alpha, k, True)
    assert torch.equal(tp, positions) and torch.equal(ta, alpha_sel)
    torch.testing.assert_close(tl, lse, rtol=1e-5, atol=1e-6)


def test_rows_with_fewer_valid_behaviors_than_k_and_empty_rows():
    alpha = torch.full((2, 4, 2, 500), NEG)
    alpha[0, :, 0, [3, 70, 499]] = torch.tensor([1.0, 2.0, 1.0])
    alpha[0, 2, 0, 10] = 5.0
    lengths = torch.tensor([500, 0])
    positions, alpha_sel, lse = select_cpu(alpha, lengths, 100, True)
    check(alpha, lengths, 100, positions, alpha_sel, lse)
    assert positions[0, 0, :4].tolist() == [70, 10, 3, 499]
    assert (positions[0, 1] == -1).all() and (positions[1] == -1).all()
    assert torch.equal(lse[0, 1], torch.zeros(4)) and torch.equal(lse[1], torch.zeros(2, 4))


@pytest.mark.parametrize("kind", ["continuous", "ties", "heavy_ties"])
def test_cpu_kernel_equals_torch_path_at_w1_size(kind):
    alpha = make_alpha(kind, 1, 4, 6, 10_007, seed=3)  # 10,007: columns outside the groups
    alpha[..., 9_000:] = NEG
    lengths = torch.tensor([9_500])
    positions, alpha_sel, lse = select_cpu(alpha, lengths, 100, True)
    tp, ta, tl = select_torch(alpha, 100, True)
    assert torch.equal(positions, tp) and torch.equal(alpha_sel, ta)
    ref = torch.logsumexp(alpha, -1).transpose(1, 2)
    torch.testing.assert_close(lse, ref, rtol=1e-5, atol=0)


def test_lse_over_a_lifelong_row_is_within_1e5_of_torch():
    g = torch.Generator().manual_seed(9)
    alpha = torch.randn(1, 4, 2, 100_000, generator=g) * 3
    _, _, lse = select_cpu(alpha, torch.tensor([100_000]), 100, True)
    torch.testing.assert_close(lse, torch.logsumexp(alpha.double(), -1).transpose(1, 2).float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("threads", [2, 3])
def test_candidates_split_over_threads_give_the_serial_result(threads):
    alpha = make_alpha("ties", 2, 4, 40, 3_000, seed=11)
    lengths = torch.tensor([3_000, 1_700])
    serial = select_cpu(alpha, lengths, 100, True)
    cpu_threads.set_cpu_threads(threads)
    try:
        split = select_cpu(alpha, lengths, 100, True)
    finally:
        cpu_threads.set_cpu_threads(1)
    for s, p in zip(serial, split):
        assert torch.equal(s, p)


def test_cpu_threads_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        cpu_threads.set_cpu_threads(0)


@pytest.mark.parametrize("d_k", [16, 8])
def test_alpha_with_the_bias_in_the_gemm_equals_attention_logits(d_k):
    from twin.attention import attention_logits
    from twin.kernels.cpu_alpha import alpha_cpu

    g = torch.Generator().manual_seed(d_k)
    B, L, A, C = 2, 700, 4, 9
    keys = torch.randn(B, L, A, d_k, generator=g).half()  # float16 as the projection cache holds them
    queries = torch.randn(B, C, A, d_k, generator=g)
    bias = torch.randn(B, A, L, generator=g)
    bias[1, :, 500:] = NEG  # padding
    got = alpha_cpu(keys, queries, bias, torch.empty(B, A, C, L))
    want = attention_logits(keys.float().transpose(1, 2), queries.transpose(1, 2), bias[:, :, None, :])
    if d_k == 16:  # 1/sqrt(16) is a power of two: the same float32 numbers
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (got[1, :, :, 500:] == NEG).all() and torch.isfinite(got[1, :, :, :500]).all()
