"""The paper's long-sequence baselines: each one's selection on inputs whose answer is known, and that
every one trains inside TWIN's framework (and is refused by the model store)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.twin_factory import tiny_config, train_batch
from training.long_sequence_baselines import (
    BASELINE_VARIANTS, MODELS, SDIM_TAU, Sdim, build_model, selection_ranking)
from training.long_sequence_retrieval import (
    hamming_distance, rank_by_score, same_category_score, sdim_bucket_sums, sdim_codes, sdim_sampled, simhash_bits)

CAT = 2  # the category column of the factory's raw items


def baseline(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(tiny_config(**overrides), **BASELINE_VARIANTS[name][0])
    return build_model(cfg).eval()


def test_sim_hard_selects_only_same_category_behaviors_newest_first():
    seq_cat = torch.tensor([[3, 1, 3, 2, 3, 3, 1, 3, 0, 0]])  # [B=1, L=10], newest first
    mask = torch.tensor([[True] * 8 + [False] * 2])  # the last two are padding
    target_cat = torch.tensor([[3, 1, 0]])  # [B, C=3]: 0 matches padding only
    positions = rank_by_score(same_category_score(target_cat, seq_cat), mask, 4)
    assert positions.tolist() == [[[0, 2, 4, 5], [1, 6, -1, -1], [-1, -1, -1, -1]]]


def test_sim_hard_model_retrieves_the_newest_same_category_behaviors_of_a_batch():
    model, b = baseline("sim_hard"), train_batch(B=2, L=120, lengths=[120, 30])
    positions = selection_ranking(model, b, 20)  # [B, C, 20]
    for i in range(2):
        n = int(b.seq_mask[i].sum())
        for c in range(b.target.shape[1]):
            want = [p for p in range(n) if b.seq_items[i, p, CAT] == b.target[i, c, CAT]][:20]
            assert positions[i, c].tolist() == want + [-1] * (20 - len(want))


def brute_hamming_topk(t_bits: torch.Tensor, s_bits: torch.Tensor, n_valid: int, k: int) -> list[int]:
    t = int("".join("1" if x else "0" for x in t_bits.tolist()), 2)
    dists = [bin(t ^ int("".join("1" if x else "0" for x in s_bits[p].tolist()), 2)).count("1")
             for p in range(n_valid)]
    order = sorted(range(n_valid), key=lambda p: (dists[p], p))[:k]
    return order + [-1] * (k - len(order))


@pytest.mark.parametrize("m", [8, 64])
def test_eta_hamming_topk_equals_brute_force(m):
    g = torch.Generator().manual_seed(m)
    B, C, L, k = 2, 3, 90, 25
    emb_t, emb_s = torch.randn(B, C, 16, generator=g), torch.randn(B, L, 16, generator=g)
    planes = torch.randn(16, m, generator=g)
    t_bits, s_bits = simhash_bits(emb_t, planes), simhash_bits(emb_s, planes)
    mask = torch.arange(L)[None] < torch.tensor([[L], [40]])
    positions = rank_by_score(-hamming_distance(t_bits, s_bits).float(), mask, k)
    for i in range(B):
        for c in range(C):
            assert positions[i, c].tolist() == brute_hamming_topk(t_bits[i, c], s_bits[i], int(mask[i].sum()), k)


def test_eta_model_ranks_by_the_hamming_distance_of_its_item_embedding_signatures():
    model, b = baseline("eta"), train_batch(B=1, L=80)
    positions = selection_ranking(model, b, 10)
    with torch.no_grad():
        t_bits = simhash_bits(model.inherent_emb(b.target), model.planes)
        s_bits = simhash_bits(model.inherent_emb(b.seq_items), model.planes)
    for c in range(b.target.shape[1]):
        assert positions[0, c].tolist() == brute_hamming_topk(t_bits[0, c], s_bits[0], 80, 10)


def test_sim_soft_is_the_top_k_inner_product_of_item_embeddings():
    model, b = baseline("sim_soft"), train_batch(B=1, L=60)
    positions = selection_ranking(model, b, 7)
    with torch.no_grad():
        q, e = model.inherent_emb(b.target)[0], model.inherent_emb(b.seq_items)[0]  # [C, H], [L, H]
    for c in range(q.shape[0]):
        dots = (e @ q[c]).tolist()
        assert positions[0, c].tolist() == sorted(range(60), key=lambda p: (-dots[p], p))[:7]


def test_sdim_sampled_set_is_the_behaviors_sharing_the_targets_signature_in_each_round():
    g = torch.Generator().manual_seed(3)
    B, C, L, R, tau = 2, 3, 50, 5, 2
    t_bits = torch.rand(B, C, R * tau, generator=g) > 0.5
    s_bits = torch.rand(B, L, R * tau, generator=g) > 0.5
    mask = torch.arange(L)[None] < torch.tensor([[L], [20]])
    sampled = sdim_sampled(sdim_codes(t_bits, tau), sdim_codes(s_bits, tau), mask)  # [B, C, R, L]
    for i in range(B):
        for c in range(C):
            for r in range(R):
                sig = t_bits[i, c, r * tau:(r + 1) * tau].tolist()
                want = [p for p in range(L) if mask[i, p] and s_bits[i, p, r * tau:(r + 1) * tau].tolist() == sig]
                assert torch.nonzero(sampled[i, c, r]).flatten().tolist() == want
    values = torch.randn(B, L, 6, generator=g)
    sums = sdim_bucket_sums(sdim_codes(t_bits, tau), sdim_codes(s_bits, tau), mask, values, tau)
    torch.testing.assert_close(sums, torch.einsum("bcrl,bld->bcrd", sampled.float(), values))


def test_sdim_model_pools_exactly_the_sampled_behaviors():
    """Per round, the L2-normalised sum of the values K W^v of the target's sampled set; rounds averaged."""
    model, b = baseline("sdim"), train_batch(B=2, L=40, lengths=[40, 25])
    assert isinstance(model, Sdim)
    A, dk, dv = model.cfg.n_heads, model.cfg.d_k, model.cfg.d_v
    with torch.no_grad():
        _, queries = model._queries(b.target)
        parts, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
        got = model._long_term(b, queries, parts, bias)[0]  # [B, C, A*d_v]
        sampled = sdim_sampled(sdim_codes(model._bits(b.target), SDIM_TAU),
                               sdim_codes(model._bits(b.seq_items), SDIM_TAU), b.seq_mask).float()  # [B, C, R, L]
        values = model.project_items(b.seq_items)[..., A * dk:] + torch.cat(parts, -1) @ model.w_v_cross.weight.T
        per_round = torch.einsum("bcrl,bld->bcrd", sampled, values).unflatten(-1, (A, dv))  # [B, C, R, A, d_v]
        want = torch.nn.functional.normalize(per_round, dim=-1).mean(2).flatten(2)
    assert 0 < sampled.mean() < 0.5  # a real sample: some behaviors in, most out, per round
    torch.testing.assert_close(got, want)


def test_avg_pooling_is_the_mean_of_the_values_over_the_valid_behaviors():
    model, b = baseline("avg_pooling"), train_batch(B=2, L=30, lengths=[30, 12])
    with torch.no_grad():
        _, queries = model._queries(b.target)
        parts, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
        got = model._long_term(b, queries, parts, bias)[0]  # [B, C, A*d_v]
        A, dk, dv = model.cfg.n_heads, model.cfg.d_k, model.cfg.d_v
        for i, n in enumerate((30, 12)):
            vals = model.project_items(b.seq_items[i, :n])[:, A * dk:]  # [n, A*d_v]
            cross = torch.cat([p[i, :n] for p in parts], -1) @ model.w_v_cross.weight.T
            torch.testing.assert_close(got[i], (vals + cross).mean(0).expand_as(got[i]))


def test_the_twin_ranking_at_top_k_is_the_models_own_selection_and_longer_ones_extend_it():
    torch.manual_seed(0)
    from twin.model import TwinCTR

    model, b = TwinCTR(tiny_config()).eval(), train_batch(B=2, L=200, lengths=[200, 150])
    with torch.no_grad():
        _, own = model.esu_oracle_weights(b)  # [B, C, k] the CP-GSU selection
        long = selection_ranking(model, b, 200)
    assert torch.equal(long[..., :model.cfg.top_k], own)
    assert torch.equal(long[1, :, 150:], torch.full_like(long[1, :, 150:], -1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_baseline_trains_end_to_end(name):
    model = baseline(name).train()
    b = train_batch(B=3, L=150, lengths=[150, 90, 40])
    logits = model(b)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, b.label).backward()
    assert model.inherent_emb.tables[0].weight.grad.abs().sum() > 0  # the shared embeddings learn
    assert model.w_v_cross.weight.grad.abs().sum() > 0  # the values of the long sequence learn
    if model.selects:  # the ESU's attention learns on what the baseline retrieved
        assert model.w_q.weight.grad.abs().sum() > 0


def test_the_inconsistent_gsu_learns_its_own_keys_and_differs_from_the_esus_selection():
    model = baseline("twin_inconsistent").train()
    b = train_batch(B=2, L=150)
    torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label).backward()
    assert model.gsu_w_key.weight.grad.abs().sum() > 0 and model.gsu_w_q.weight.grad.abs().sum() > 0
    with torch.no_grad():
        _, gsu = model.esu_oracle_weights(b.to(torch.device("cpu")))
        consistent = selection_ranking(build_model(dataclasses.replace(model.cfg, extra={})).eval(), b, 20)
    assert not torch.equal(gsu, consistent)


def test_the_straight_through_lse_keeps_the_value_of_the_full_sequence_lse():
    from twin.kernels.torch_gsu import full_lse

    model, b = baseline("twin_inconsistent"), train_batch(B=2, L=120)
    with torch.no_grad():
        _, queries = model._queries(b.target)
        parts, bias = model._cross(b.seq_cross, b.seq_ts, b.now)
        lse = model._long_term(b, queries, parts, bias)[2]
        alpha, _, _ = model._gsu_alpha(b, parts)
    torch.testing.assert_close(lse, full_lse(alpha))


def test_din_is_the_recent_variant():
    from training.trainer import VARIANTS

    assert VARIANTS["din"] == VARIANTS["recent"]


def test_the_model_store_refuses_to_publish_a_baseline(tmp_path):
    from model_store.registry import ModelRegistry

    with pytest.raises(ValueError, match="training-only long-sequence baseline 'sim_hard'"):
        ModelRegistry(tmp_path).publish(baseline("sim_hard"), metrics={}, data_fingerprint="0" * 64)


def test_the_cli_refuses_to_publish_a_baseline_before_training(tmp_path):
    from training import cli

    with pytest.raises(SystemExit, match="'sim_soft' is a training-only long-sequence baseline"):
        cli.main(["train", "--data", str(tmp_path), "--variants", "sim_soft,twin", "--out-registry", str(tmp_path)])
