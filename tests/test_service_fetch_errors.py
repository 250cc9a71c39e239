"""The score fetch maps store failures by kind (cache.errors): a refusal degrades the answer without
tripping the breaker, an outage trips it, and a bug is a logged 500 that trips nothing."""
from __future__ import annotations

from cache.behavior_store import BehaviorStore
from tests.service_world import NOW_MS, World, running, world  # noqa: F401

SCORE = {"user_id": 2, "candidates": [{"item_id": 5}, {"item_id": 6}], "context": {"ts": NOW_MS}}
OTHER = {"user_id": 1, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}


async def test_a_refused_read_degrades_that_answer_and_leaves_the_breaker_closed(world: World):
    client_r = world.handle.client
    async with running(world.settings) as (_, client):
        await client_r.delete(world.keys.user_log(2))
        await client_r.hset(world.keys.user_log(2), "x", "y")  # WRONGTYPE for the log's GETRANGE: Redis refuses
        r = await client.post("/v1/score", json=SCORE)
        ready = await client.get("/health/ready")
        other = await client.post("/v1/score", json=OTHER)
    assert r.status_code == 200 and r.json()["degraded_reasons"] == ["redis_refused"], r.text
    assert ready.status_code == 200, ready.text
    assert other.status_code == 200 and other.json()["degraded"] is False, other.text


async def test_a_bug_in_the_fetch_is_a_logged_500_that_trips_nothing(world: World, monkeypatch, caplog):
    real = BehaviorStore.read_since

    async def broken(self, user_id, known_total, n):
        if user_id == 2:
            raise ValueError("a bug in the read path")
        return await real(self, user_id, known_total, n)

    monkeypatch.setattr(BehaviorStore, "read_since", broken)
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/score", json=SCORE)
        ready = await client.get("/health/ready")
        other = await client.post("/v1/score", json=OTHER)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 500 and r.json()["reason"] == "internal_error", r.text
    assert any("a bug in the read path" in (rec.exc_text or "") for rec in caplog.records)
    assert ready.status_code == 200, ready.text
    assert other.status_code == 200 and other.json()["degraded"] is False, other.text
    assert 'twin_degraded_total{reason="redis_unavailable"}' not in metrics
