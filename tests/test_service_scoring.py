"""/v1/score answers what the model answers, batched or not, and flags what it could not compute."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from tests.service_world import NOW_MS, World, item_rows, reference_scores, running, world  # noqa: F401
from twin.attention import attention_logits, cross_bias, round_robin_topk
from twin.features import cross_ids


def body(user: int, cands: list[int], **kw) -> dict:
    return {"user_id": user, "candidates": [{"item_id": c} for c in cands], "context": {"ts": NOW_MS}, **kw}


async def test_scores_equal_direct_model_score(world: World):
    version = world.registry.active()
    async with running(world.settings) as (_, client):
        for user, cands in [(1, [5, 17, 42]), (2, list(range(30))), (3, [599]), (4, [1, 2, 3, 4, 5, 6, 7, 8, 9])]:
            r = await client.post("/v1/score", json=body(user, cands))
            assert r.status_code == 200, r.text
            j = r.json()
            assert j["model_version"] == version and j["degraded"] is False, j
            ref, _ = await reference_scores(world, version, user, cands, NOW_MS)
            np.testing.assert_allclose(j["scores"], ref.scores[0].numpy(), atol=1e-5, rtol=0)
            assert set(j["timings_ms"]) == {"queue", "fetch", "gsu", "esu", "total"}


async def test_explain_selects_the_round_robin_topk_of_alpha(world: World):
    version = world.registry.active()
    model = world.models[version]
    cands = [3, 77, 250]
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/score", json=body(1, cands, explain=True))
    assert r.status_code == 200, r.text
    ex = r.json()["explain"]
    _, block = await reference_scores(world, version, 1, cands, NOW_MS)
    alpha = _full_alpha(model, block, cands)  # [1, A, C, L]
    rr, valid = round_robin_topk(alpha, model.cfg.top_k)  # the twin function, on every behavior
    for j, c in enumerate(cands):
        got = [s["position"] for s in ex[j]["selected"]]
        assert ex[j]["item_id"] == c
        assert got == [int(p) for p in rr[0, j][valid[0, j]]]
        for s in ex[j]["selected"]:
            p = s["position"]
            assert s["item_id"] == int(block.item_id[p]) and s["ts"] == int(block.ts[p])
            assert len(s["weight"]) == len(s["alpha_proj"]) == len(s["alpha_bias"]) == model.cfg.n_heads
            total = np.array(s["alpha_proj"]) + np.array(s["alpha_bias"])
            np.testing.assert_allclose(total, alpha[0, :, j, p].numpy(), atol=1e-4)
        w = np.array([s["weight"] for s in ex[j]["selected"]])  # [k, A]: a softmax per head
        np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-5)


def _full_alpha(model, block, cand_ids: list[int]) -> torch.Tensor:
    """alpha [1, A, C, L] over every behavior, built from the twin functions and the model's
    parameters on raw catalog rows (projections rounded to float16 as the cache stores them)."""
    A, dk = model.cfg.n_heads, model.cfg.d_k
    L = len(block)
    with torch.inference_mode():
        proj = model.project_items(torch.from_numpy(item_rows(block.item_id))).half().float()  # [L, D]
        keys = proj[:, :A * dk].reshape(L, A, dk).transpose(0, 1)  # [A, L, d_k]
        q = model.w_q(model.inherent_emb(torch.from_numpy(item_rows(np.array(cand_ids)))))  # [C, A*d_k]
        queries = q.reshape(len(cand_ids), A, dk).transpose(0, 1)  # [A, C, d_k]
        ids = cross_ids(model.cfg.schema, torch.from_numpy(block.cross)[None], torch.from_numpy(block.ts)[None],
                        torch.tensor([NOW_MS]))
        bias = cross_bias(model.cross_emb.parts(ids), model.w_c, model.beta)[0]  # [L, A]
        alpha = attention_logits(keys, queries, bias.T[:, None, :])  # [A, C, L]
    return alpha[None]


async def test_concurrent_requests_are_batched_and_score_the_same(world: World):
    reqs = [body(u, [int(c) for c in np.random.default_rng(u * 10 + i).integers(0, 600, 5 + i)])
            for i, u in enumerate([1, 2, 3, 4] * 6)]
    settings = world.settings.model_copy(update={"batch_max_wait_ms": 20.0})
    async with running(settings) as (app, client):
        alone = [(await client.post("/v1/score", json=b)).json()["scores"] for b in reqs]
        together = await asyncio.gather(*(client.post("/v1/score", json=b) for b in reqs))
        metrics = (await client.get("/metrics")).text
    for a, t in zip(alone, together):
        assert t.status_code == 200
        np.testing.assert_allclose(t.json()["scores"], a, atol=1e-5, rtol=0)
    assert _max_observed(app.state.metrics, "requests") > 1, metrics


def _max_observed(metrics, unit: str) -> float:
    """Largest bucket bound with a count above the one below it (i.e. some batch had > bound/2)."""
    for fam in metrics.registry.collect():
        if fam.name != "twin_batch_size":
            continue
        counts = [(float(s.labels["le"]), s.value) for s in fam.samples
                  if s.name.endswith("_bucket") and s.labels.get("unit") == unit]
        prev, best = 0.0, 0.0
        for le, v in counts:
            if v > prev:
                best = le
            prev = v
        return best
    return 0.0


async def test_unknown_user_is_scored_with_empty_history_and_flagged(world: World):
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/score", json=body(987654321, [1, 2]))
    j = r.json()
    assert r.status_code == 200 and j["degraded"] is True and j["degraded_reasons"] == ["unknown_user"]
    assert len(j["scores"]) == 2 and all(0 < s < 1 for s in j["scores"])


async def test_candidate_features_override_and_unknown_items(world: World):
    async with running(world.settings) as (_, client):
        known = await client.post("/v1/score", json=body(2, [10]))
        # the same features given explicitly: same score
        same = await client.post("/v1/score", json={"user_id": 2, "context": {"ts": NOW_MS}, "candidates": [
            {"item_id": 10, "features": {"author_id": 10, "category": 10, "duration_s": 71, "views": 310}}]})
        # an item unknown to the catalog, with its features: scored
        new = await client.post("/v1/score", json={"user_id": 2, "candidates": [
            {"item_id": 10_000, "features": {"author_id": 3, "category": 1, "duration_s": 30, "views": 0}}]})
        # unknown and featureless: 422 naming candidates[1].item_id
        bad = await client.post("/v1/score", json=body(2, [10, 10_001]))
    assert known.status_code == same.status_code == new.status_code == 200
    np.testing.assert_allclose(same.json()["scores"], known.json()["scores"], atol=1e-6)
    assert new.json()["degraded"] is False
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "candidates", 1, "item_id"]


@pytest.mark.parametrize("deadline", ["0.001"])
async def test_expired_deadline_gives_504(world: World, deadline: str):
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/score", json=body(1, list(range(60))), headers={"X-Deadline-Ms": deadline})
    assert r.status_code == 504, r.text
