"""Model lifecycle through the API: readiness means warm, zero-failure swaps under load, refusals, rollback."""
from __future__ import annotations

import asyncio

import numpy as np

from tests.service_world import ADMIN, NOW_MS, World, reference_scores, running, world  # noqa: F401

AUTH = {"Authorization": f"Bearer {ADMIN}"}
CANDS = [5, 50, 500]
REQ = {"user_id": 2, "candidates": [{"item_id": c} for c in CANDS], "context": {"ts": NOW_MS}}


async def test_ready_means_warm_and_no_model_is_not_ready(world: World, tmp_path):
    async with running(world.settings) as (_, client):
        r = await client.get("/health/ready")
        assert r.status_code == 200 and r.json()["ready"] is True and r.json()["model_version"]
        assert (await client.get("/health/live")).status_code == 200
        listing = (await client.get("/v1/models")).json()
        assert listing["active"] == listing["serving"] == world.registry.active()
        assert listing["features"] == ["author_id", "category", "duration_s", "views"]
        assert listing["cross"] == ["play_ratio", "liked"]
    empty = world.settings.model_copy(update={"model_root": tmp_path / "empty"})
    async with running(empty) as (_, client):
        r = await client.get("/health/ready")
        s = await client.post("/v1/score", json=REQ)
    assert r.status_code == 503 and r.json() == {"ready": False, "reasons": ["no_active_model"], "model_version": None}
    assert s.status_code == 503 and "Retry-After" in s.headers


async def test_activation_under_traffic_fails_no_request_and_answers_match_their_version(world: World):
    v1 = world.registry.active()
    v2 = world.publish(seed=1)
    responses = []
    stop = asyncio.Event()

    async with running(world.settings) as (_, client):
        async def traffic():
            while not stop.is_set():
                responses.append(await client.post("/v1/score", json=REQ))

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        await asyncio.sleep(0.2)
        act = await client.post(f"/v1/models/{v2}/activate", headers=AUTH)  # projects v2, warms, switches
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
        after = (await client.get("/v1/models")).json()
        metrics = (await client.get("/metrics")).text
    assert act.status_code == 200 and act.json() == {"active": v2}
    assert after["active"] == after["serving"] == v2 and world.registry.active() == v2
    assert f'twin_active_model_info{{version="{v2}"}} 1.0' in metrics
    want = {v: (await reference_scores(world, v, 2, CANDS, NOW_MS))[0].scores[0].numpy() for v in (v1, v2)}
    assert not np.allclose(want[v1], want[v2], atol=1e-4)  # the versions are distinguishable
    assert [r.status_code for r in responses] == [200] * len(responses)
    seen = {r.json()["model_version"] for r in responses}
    assert seen == {v1, v2}
    for r in responses:
        j = r.json()
        np.testing.assert_allclose(j["scores"], want[j["model_version"]], atol=1e-5, rtol=0)


async def test_broken_artifact_is_refused_and_the_active_model_stays(world: World):
    v1 = world.registry.active()
    bad = world.publish(seed=2)
    weights = world.registry.versions_dir / bad / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-8:] = b"\x00" * 8  # flip the tail: checksum mismatch
    weights.write_bytes(bytes(blob))
    async with running(world.settings) as (_, client):
        r = await client.post(f"/v1/models/{bad}/activate", headers=AUTH)
        missing = await client.post("/v1/models/20990101-0001/activate", headers=AUTH)
        malformed = await client.post("/v1/models/latest/activate", headers=AUTH)
        s = await client.post("/v1/score", json=REQ)
    assert r.status_code == 409 and bad in r.json()["detail"]
    assert missing.status_code == 404 and malformed.status_code == 422
    assert world.registry.active() == v1
    assert s.status_code == 200 and s.json()["model_version"] == v1


async def test_rollback_returns_to_the_previous_version(world: World):
    v1 = world.registry.active()
    v2 = world.publish(seed=3)
    async with running(world.settings) as (_, client):
        assert (await client.post(f"/v1/models/{v2}/activate", headers=AUTH)).status_code == 200
        assert (await client.post("/v1/score", json=REQ)).json()["model_version"] == v2
        rb = await client.post("/v1/models/rollback", headers=AUTH)
        s = await client.post("/v1/score", json=REQ)
        again = await client.post("/v1/models/rollback", headers=AUTH)
    assert rb.status_code == 200 and rb.json() == {"active": v1}
    assert s.json()["model_version"] == v1 and world.registry.active() == v1
    want = (await reference_scores(world, v1, 2, CANDS, NOW_MS))[0].scores[0].numpy()
    np.testing.assert_allclose(s.json()["scores"], want, atol=1e-5)
    assert again.status_code == 409  # nothing left to roll back to
