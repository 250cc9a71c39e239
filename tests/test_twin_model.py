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


@pytest.mark.parametrize("full_lse,user_stats", [(True, True), (False, True), (True, False), (False, False)])
def test_serving_path_equals_training_path_fp32(full_lse, user_stats):
    model = tiny_model(full_lse=full_lse, user_stats=user_stats)
    b = train_batch(B=5, lengths=[300, 150, 7, 21, 1], C=4)
    b.target_mask[3, 2:] = False  # a request with fewer targets than the batch's widest
    with torch.no_grad():
        train_logits = model(b)  # [B, C]
        serve = serve_batch_from(model, b)
        serve_logits = model.score(serve).logits
    torch.testing.assert_close(serve_logits, train_logits, atol=1e-5, rtol=0)
    assert (train_logits[3, 2:] == 0).all()


def test_full_lse_is_the_log_sum_exp_of_alpha_over_every_valid_behavior():
    from twin.kernels.torch_gsu import full_lse

    model = tiny_model()
    b = serve_batch_from(model, train_batch(B=3, lengths=[300, 40, 1], C=2))
    with torch.no_grad():
        g = model.select(b)
        _, queries = model._queries(b.cand)
        _, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
        alpha = model._full_alpha(model._split_proj(b.seq_proj)[0], queries, bias, b.seq_mask)  # [B, A, C, L]
    for i, n in enumerate([300, 40, 1]):
        want = torch.logsumexp(alpha[i, :, :, :n], dim=-1).T  # [C, A]: only the valid behaviors count
        torch.testing.assert_close(g.lse_full[i], want, atol=1e-5, rtol=1e-5)
    empty = torch.full((1, 4, 2, 5), float("-inf"), requires_grad=True)
    out = full_lse(empty)
    assert torch.equal(out, torch.zeros(1, 2, 4))  # no behavior: 0, not -inf
    out.sum().backward()
    assert torch.isfinite(empty.grad).all()  # and no NaN gradient for training


def test_the_lse_grows_with_the_number_of_matching_behaviors():
    from twin.kernels.torch_gsu import full_lse

    alpha = torch.full((1, 1, 2, 1000), -10.0)  # the rest: negligible mass
    alpha[0, 0, 0, :10] = 3.0   # target 0: 10 behaviors match
    alpha[0, 0, 1, :100] = 3.0  # target 1: 100 match, same relevance each
    lse = full_lse(alpha)[0, :, 0]
    assert lse[1] - lse[0] == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=0.01)


def test_fp16_cached_projections_stay_close():
    model = tiny_model()
    b = train_batch(B=4)
    with torch.no_grad():
        exact = model.score(serve_batch_from(model, b)).scores  # [B, C]
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


@pytest.mark.parametrize("full_lse", [True, False])
def test_gradients_reach_every_parameter(full_lse):
    model = tiny_model(full_lse=full_lse).train()
    b = train_batch(B=8)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_the_training_projection_of_distinct_items_equals_projecting_every_behavior():
    model = tiny_model()
    b = train_batch(B=3, lengths=[300, 100, 2])
    torch.testing.assert_close(model._project_sequence(b.seq_items), model.project_items(b.seq_items))


def test_old_configs_without_the_additions_rebuild_models_without_them():
    d = tiny_config().to_dict()
    del d["full_lse"], d["user_stats"]
    cfg = TwinConfig.from_dict(d)
    assert cfg.full_lse is False and cfg.user_stats is False


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
    b = train_batch(B=3, lengths=[300, 120, 1])
    off = tiny_model(full_lse=False)
    with torch.no_grad():
        assert off.select(serve_batch_from(off, b)).lse_full is None
