"""The TWIN model: serving == training, the round-robin union, the cross bias, gradients."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.twin_factory import serve_batch_from, tiny_config, tiny_model, train_batch
from twin.attention import round_robin_topk
from twin.config import TwinConfig
from twin.model import TwinCTR


def reference_round_robin(alpha_row: torch.Tensor, k: int) -> list[int]:
    """Plain Python: each head ranks valid positions by (alpha desc, position asc); walk ranks
    round-robin over heads, keep first occurrences until k."""
    A, L = alpha_row.shape
    rankings = [sorted((p for p in range(L) if alpha_row[a, p] > float("-inf")),
                       key=lambda p: (-alpha_row[a, p].item(), p)) for a in range(A)]
    out: list[int] = []
    for r in range(L):
        for a in range(A):
            if r < len(rankings[a]) and rankings[a][r] not in out and len(out) < k:
                out.append(rankings[a][r])
    return out


@pytest.mark.parametrize("L,k,ties,short", [(50, 10, False, False), (50, 10, True, False), (8, 10, False, False),
                                             (40, 10, True, True), (300, 100, True, False)])
def test_round_robin_matches_reference(L, k, ties, short):
    g = torch.Generator().manual_seed(L * 7 + k)
    B, A, C = 2, 4, 3
    alpha = torch.randint(0, 5, (B, A, C, L), generator=g).float() if ties else torch.randn(B, A, C, L, generator=g)
    if short:  # padded sequences: the tail is -inf
        alpha[0, :, :, L // 4:] = float("-inf")
    positions, valid = round_robin_topk(alpha, k)
    assert positions.shape == (B, C, k)
    for b in range(B):
        for c in range(C):
            want = reference_round_robin(alpha[b, :, c], k)
            got = positions[b, c][valid[b, c]].tolist()
            assert got == want
            assert len(set(got)) == len(got)
            assert (positions[b, c][~valid[b, c]] == -1).all()


def test_serving_path_equals_training_path_fp32():
    model = tiny_model()
    b = train_batch(B=5, lengths=[300, 150, 7, 21, 1])
    with torch.no_grad():
        train_logits = model(b)
        serve_logits = model.score(serve_batch_from(model, b)).logits[:, 0]
    torch.testing.assert_close(serve_logits, train_logits, atol=1e-5, rtol=0)


def test_fp16_cached_projections_stay_close():
    model = tiny_model()
    b = train_batch(B=4)
    with torch.no_grad():
        exact = model.score(serve_batch_from(model, b)).scores
        half = model.score(serve_batch_from(model, b, torch.float16)).scores
    assert (exact - half).abs().max() < 1e-3


def test_explain_positions_are_the_round_robin_topk_of_alpha():
    model = tiny_model()
    b = serve_batch_from(model, train_batch(B=2))
    with torch.no_grad():
        g = model.select(b)
        out = model.finish(b, g, explain=True)
        _, queries = model._queries(b.cand)
        _, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
        keys, _ = model._split_proj(b.seq_proj)
        alpha = model._full_alpha(keys, queries, bias, b.seq_mask)
    want, _ = round_robin_topk(alpha, model.cfg.top_k)
    assert torch.equal(out.explain.positions, want)
    # the weight is the softmax of alpha_proj + alpha_bias over the selected behaviors
    w = torch.softmax(out.explain.alpha_proj + out.explain.alpha_bias, dim=-1)
    torch.testing.assert_close(out.explain.weight, w)


def test_a_cross_feature_alone_changes_the_selection():
    model = tiny_model()
    with torch.no_grad():
        model.beta.fill_(1.0)
        model.w_c.zero_()
        model.w_c[:, 8:16] = 5.0  # the play_ratio block: only this cross feature carries bias
        play_ratio = model.cross_emb.tables[1].weight
        play_ratio.zero_()
        play_ratio[-1] = 1.0  # a completed view: bias 40 on every head; every other bucket: 0
    b = train_batch(B=1, L=300)
    b.seq_cross[..., 0] = 0.0  # every behavior in the lowest play-ratio bucket
    sb = serve_batch_from(model, b)
    with torch.no_grad():
        before = model.select(sb).positions[0, 0]
    assert 250 not in before.tolist()
    sb.seq_cross[0, 250, 0] = 1.0  # completed the video: only the cross feature changed
    with torch.no_grad():
        after = model.select(sb).positions[0, 0]
    assert 250 in after.tolist()
    assert torch.equal(sb.seq_proj, serve_batch_from(model, b).seq_proj)  # the inherent side is untouched


def test_without_cross_bias_selection_ignores_cross_features():
    model = tiny_model(cross_bias=False)
    b = train_batch(B=1)
    sb = serve_batch_from(model, b)
    with torch.no_grad():
        before = model.select(sb).positions
        sb.seq_cross[..., 0] = torch.rand_like(sb.seq_cross[..., 0])
        after = model.select(sb).positions
    assert torch.equal(before, after)


def test_recent_gsu_selects_the_newest_behaviors():
    model = tiny_model(gsu="recent")
    b = train_batch(B=2, lengths=[300, 5])
    with torch.no_grad():
        g = model.select(serve_batch_from(model, b))
    assert g.positions[0, 0].tolist() == list(range(20))
    assert g.positions[1, 0].tolist() == list(range(5)) + [-1] * 15


def test_gradients_reach_every_parameter():
    model = tiny_model().train()
    b = train_batch(B=8)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_consistency_counts_oracle_hits():
    model = tiny_model()
    b = train_batch(B=3, lengths=[300, 300, 12])
    hits, size = model.gsu_consistency(b, oracle_k=20)
    assert size.tolist() == [20, 20, 12]
    assert hits[2] == 12  # a sequence shorter than k is selected whole
    assert ((hits >= 0) & (hits <= size)).all()
    recent = tiny_model(gsu="recent")
    recent.load_state_dict(model.state_dict())
    hits_recent, _ = recent.gsu_consistency(b, oracle_k=20)
    assert hits[:2].sum() > hits_recent[:2].sum()  # alpha-based GSU finds more of the oracle than recency


def test_config_round_trip_rebuilds_the_same_model():
    cfg = tiny_config()
    cfg2 = TwinConfig.from_dict(cfg.to_dict())
    assert cfg2 == cfg
    m1, m2 = TwinCTR(cfg), TwinCTR(cfg2)
    assert {k: v.shape for k, v in m1.state_dict().items()} == {k: v.shape for k, v in m2.state_dict().items()}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="gsu"):
        dataclasses.replace(tiny_config(), gsu="avg")
    with pytest.raises(ValueError, match="top_k"):
        dataclasses.replace(tiny_config(), top_k=0)


def test_esu_pools_the_cross_values_before_projecting_them_with_the_same_result():
    from twin.attention import esu_pool, masked_softmax

    g = torch.Generator().manual_seed(8)
    B, C, k, A, d_v, cx = 2, 3, 5, 4, 6, 7
    alpha = torch.randn(B, C, A, k, generator=g)
    vals_inh = torch.randn(B, C, k, A, d_v, generator=g)
    cross = torch.randn(B, C, k, cx, generator=g)
    w = torch.randn(A * d_v, cx, generator=g)
    valid = torch.rand(B, C, k, generator=g) > 0.3
    valid[0, 0] = False  # a candidate with nothing selected
    _, heads, evidence = esu_pool(alpha, vals_inh, cross, w, valid)
    values = vals_inh + (cross @ w.T).unflatten(-1, (A, d_v))  # the full K W^v, [B, C, k, A, d_v]
    weights = masked_softmax(alpha, valid[:, :, None, :])
    expected = torch.einsum("bcak,bckad->bcad", weights, values).flatten(-2)
    torch.testing.assert_close(heads, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(heads[0, 0], torch.zeros(A * d_v)) and torch.equal(evidence[0, 0], torch.zeros(A))


def test_select_fills_the_full_sequence_lse_only_when_configured():
    b = train_batch(B=3, lengths=[300, 120, 0 + 1])
    off = tiny_model()
    on = tiny_model(full_lse=True)
    with torch.no_grad():
        sb = serve_batch_from(on, b)
        assert off.select(sb).lse_full is None
        g = on.select(sb)
        _, queries = on._queries(sb.cand)
        _, bias = on._cross(sb.seq_cross, sb.seq_ts, sb.now)
        alpha = on._full_alpha(on._split_proj(sb.seq_proj)[0], queries, bias, sb.seq_mask)  # [B, A, 1, L]
    want = torch.logsumexp(alpha, -1).transpose(1, 2)  # [B, 1, A]: padding is -inf in alpha
    assert g.lse_full.shape == (3, 1, on.cfg.n_heads)
    torch.testing.assert_close(g.lse_full, want, rtol=1e-5, atol=0)
    assert torch.equal(on.score(sb).scores, off.score(sb).scores)  # the tower does not read it (yet)
