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


def fused_inputs(kind: str, B: int, L: int, C: int, A: int = 4, d_k: int = 16, seed: int = 0, half: bool = True):
    """The fused kernel's inputs: proj [B, L, D] (keys = first A*d_k columns), the cross bias as table
    rows [J, B, L] + table [R, A], seq_mask [B, L] (all True), augmented queries."""
    from twin.kernels.cpu_fused_gsu import augment_queries

    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(B, L, A * d_k * 2, generator=g)
    rows = torch.stack([torch.randint(0, 7, (B, L), generator=g), 7 + torch.randint(0, 3, (B, L), generator=g)])
    table = torch.randn(10, A, generator=g) * 0.3
    if kind == "repeats":  # a user who replays a handful of items: rows (and so alpha) repeat exactly
        pick = torch.randint(0, 5, (B, L), generator=g)
        proj = proj[torch.arange(B)[:, None], pick]
        rows = rows.gather(2, pick[None].expand(2, B, L))
    elif kind == "rising":  # older behaviors score higher: every block beats the threshold (quickselects)
        rows = torch.arange(L).expand(1, B, L).contiguous()
        table = (torch.arange(L) * 0.01)[:, None].expand(L, A) + torch.randn(L, A, generator=g) * 0.3
    elif kind == "bias_only":  # zero keys: alpha is the bias alone, 3 distinct values
        proj[..., :A * d_k] = 0.0
        rows, table = rows[1:], torch.randint(0, 3, (10, A), generator=g).float()
    q = augment_queries(torch.randn(B, C, A, d_k, generator=g))
    return (proj.half() if half else proj), rows, table, torch.ones(B, L, dtype=torch.bool), q


@pytest.mark.parametrize("kind", ["continuous", "repeats", "bias_only", "rising"])
@pytest.mark.parametrize("L,C,k", [(9_000, 5, 100), (4_700, 3, 20), (300, 4, 20), (12, 3, 20), (5_000, 131, 8)])
def test_fused_kernel_selects_what_the_materialising_kernel_selects_on_its_alpha(kind, L, C, k):
    """Over the first block only (L <= 4,096), across later blocks with a rising threshold, short rows,
    an odd candidate count, more candidates than one block of them (131 > 128): same positions, the
    same alpha bits, the same log-sum-exp to float32 rounding."""
    from twin.kernels.cpu_fused_gsu import alpha_reference, select_fused_cpu

    proj, rows, table, mask, q = fused_inputs(kind, 2, L, C, seed=L + C)
    mask[1, L // 2:] = False  # user 1 is padded ...
    mask[0, 7::5] = False  # ... and user 0 has holes inside its prefix
    lengths = torch.tensor([L, max(1, L // 2)])
    got = select_fused_cpu(proj, rows, table, mask, q, lengths, k, True)
    want = select_cpu(alpha_reference(proj, rows, table, mask, q), lengths, k, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)
    no_lse = select_fused_cpu(proj, rows, table, mask, q, lengths, k, False)
    assert torch.equal(no_lse[0], got[0]) and no_lse[2] is None


def test_fused_kernel_takes_float32_projections_and_equals_the_reference():
    from twin.kernels.cpu_fused_gsu import alpha_reference, select_fused_cpu

    proj, rows, table, mask, q = fused_inputs("continuous", 1, 6_000, 4, half=False)
    lengths = torch.tensor([6_000])
    got = select_fused_cpu(proj, rows, table, mask, q, lengths, 50, False)
    want = select_cpu(alpha_reference(proj, rows, table, mask, q), lengths, 50, False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fused_kernel_alpha_is_attention_logits_to_float32_rounding():
    from twin.attention import attention_logits
    from twin.kernels.cpu_fused_gsu import alpha_reference, augment_queries

    proj, rows, table, mask, _ = fused_inputs("continuous", 2, 700, 9, seed=5)
    queries = torch.randn(2, 9, 4, 16, generator=torch.Generator().manual_seed(6))
    keys = proj[..., :64].float().unflatten(-1, (4, 16))
    bias = (table[rows[0]] + table[rows[1]]).permute(0, 2, 1)  # [B, A, L]
    want = attention_logits(keys.transpose(1, 2), queries.transpose(1, 2), bias[:, :, None, :])
    got = alpha_reference(proj, rows, table, mask, augment_queries(queries))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threads", [2, 3])
def test_fused_kernel_split_over_threads_gives_the_serial_result(threads):
    from twin.kernels.cpu_fused_gsu import select_fused_cpu

    proj, rows, table, mask, q = fused_inputs("repeats", 2, 5_000, 40, seed=2)
    lengths = torch.tensor([5_000, 3_100])
    serial = select_fused_cpu(proj, rows, table, mask, q, lengths, 100, True)
    cpu_threads.set_cpu_threads(threads)
    try:
        split = select_fused_cpu(proj, rows, table, mask, q, lengths, 100, True)
    finally:
        cpu_threads.set_cpu_threads(1)
    for s, p in zip(serial, split):
        assert torch.equal(s, p)


def test_esu_kernel_equals_the_torch_esu():
    """Weights, evidence and both pooled sums as twin.attention.esu_pool computes them, with fewer than k
    selected behaviors, an empty row, float16 projections and two cross features of their own widths."""
    from twin.attention import esu_heads, esu_pool
    from twin.kernels import esu

    g = torch.Generator().manual_seed(4)
    B, L, C, k, A, d_k, d_v = 2, 500, 7, 30, 4, 16, 8
    proj = torch.randn(B, L, A * d_k + A * d_v, generator=g).half()
    positions = torch.randint(0, L, (B, C, k), generator=g)
    positions[1, :, 20:] = -1  # fewer than k selected
    positions[1, 3] = -1  # nothing selected
    alpha_sel = torch.randn(B, C, A, k, generator=g) * 3
    tables = [torch.randn(11, 8, generator=g), torch.randn(2, 5, generator=g)]
    ids = [torch.randint(0, 11, (B, L), generator=g), torch.randint(0, 2, (B, L), generator=g)]
    w_v_cross = torch.randn(A * d_v, 13, generator=g)
    from twin.kernels.tables import stack_rows

    rows = stack_rows(ids, [t.shape[0] for t in tables])
    weights, heads_inh, pooled, evidence = esu(proj, A * d_k, d_v, positions, alpha_sel, tables, rows)

    valid = positions >= 0
    at = positions.clamp_min(0)
    vals = proj[..., A * d_k:].float().unflatten(-1, (A, d_v))[torch.arange(B)[:, None, None], at]  # [B, C, k, A, d_v]
    cross = torch.cat([t[i[torch.arange(B)[:, None, None], at]] for t, i in zip(tables, ids)], -1)  # [B, C, k, 13]
    want_w, want_heads, want_ev = esu_pool(alpha_sel, vals, cross, w_v_cross, valid)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(evidence, want_ev, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(esu_heads(heads_inh, pooled, w_v_cross), want_heads, rtol=1e-5, atol=1e-5)
    assert torch.equal(weights[1, 3], torch.zeros(A, k)) and torch.equal(evidence[1, 3], torch.zeros(A))
