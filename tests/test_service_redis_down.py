"""Redis down or slow: events are never acknowledged unsaved, scores keep coming (degraded), readiness
drops and comes back by itself. These tests own a private embedded Redis, since they stop and pause it."""
from __future__ import annotations

import asyncio
import time

from cache.behavior_store import BehaviorStore
from cache.connection import EmbeddedRedis, open_redis
from cache.layout import Keys
from tests.service_world import NOW_MS, build_world, running

SCORE = {"user_id": 1, "candidates": [{"item_id": 5}, {"item_id": 6}], "context": {"ts": NOW_MS}}


def events(lo: int, hi: int) -> dict:
    return {"events": [{"event_id": f"e{i}", "user_id": 77, "item_id": i, "ts": NOW_MS + i,
                        "cross": {"play_ratio": 0.5, "liked": 1}} for i in range(lo, hi)]}


async def test_events_are_acknowledged_only_when_stored_and_survive_a_redis_stop(tmp_path):
    data = tmp_path / "redis"
    emb = EmbeddedRedis(str(data))
    url = f"unix://{emb.socket_path}"
    handle = await open_redis(url)
    keys = Keys(prefix="svc", n_buckets=16)
    world = await build_world(url, handle, keys, tmp_path / "models")
    acked: list[int] = []
    try:
        async with running(world.settings) as (_, client):
            for lo in range(0, 30, 10):
                r = await client.post("/v1/events", json=events(lo, lo + 10))
                assert r.status_code == 200 and r.json() == {"accepted": 10, "new": 10}
                acked += list(range(lo, lo + 10))
            replay = await client.post("/v1/events", json=events(0, 10))
            assert replay.json() == {"accepted": 10, "new": 0}  # idempotent by event_id
            await asyncio.to_thread(emb.stop)
            t0 = time.perf_counter()
            down = await client.post("/v1/events", json=events(30, 40))
            score = await client.post("/v1/score", json=SCORE)
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.5)  # a health probe runs
            ready = await client.get("/health/ready")
            score2 = await client.post("/v1/score", json=SCORE)
    finally:
        await handle.aclose()
        emb.stop()
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert score.status_code == 200 and score.json()["degraded"] is True
    assert "redis_unavailable" in score.json()["degraded_reasons"] and len(score.json()["scores"]) == 2
    assert elapsed < 4.0  # bounded by the settings' budgets, not by redis-py's retries
    assert ready.status_code == 503 and "redis_unavailable" in ready.json()["reasons"]
    assert score2.status_code == 200 and score2.json()["degraded_reasons"] == ["redis_unavailable"]
    # restart on the same data directory: every acknowledged event is there
    emb2 = EmbeddedRedis(str(data))
    h2 = await open_redis(f"unix://{emb2.socket_path}")
    try:
        block = (await BehaviorStore(h2.client, keys, 2).read_newest([77], 1000))[0]
    finally:
        await h2.aclose()
        emb2.stop()
    assert block.total == len(acked) and sorted(block.item_id.tolist()) == acked


async def test_slow_redis_degrades_within_budget_and_readiness_recovers_by_itself(tmp_path):
    emb = EmbeddedRedis()
    url = f"unix://{emb.socket_path}"
    handle = await open_redis(url)
    keys = Keys(prefix="svc", n_buckets=16)
    world = await build_world(url, handle, keys, tmp_path / "models")
    settings = world.settings.model_copy(update={"redis_timeout_ms": 100.0})
    admin = await open_redis(url)
    try:
        async with running(settings) as (_, client):
            healthy = await client.post("/v1/score", json=SCORE)
            await admin.client.execute_command("CLIENT", "PAUSE", 800, "ALL")  # Redis stops answering for 0.8 s
            t0 = time.perf_counter()
            slow = await client.post("/v1/score", json=SCORE)
            slow_s = time.perf_counter() - t0
            await asyncio.sleep(0.3)
            during = await client.get("/health/ready")
            await asyncio.sleep(0.6)  # pause over; the next probes close the breaker
            for _ in range(30):  # a probe that started inside the pause may still be timing out: poll
                after = await client.get("/health/ready")
                if after.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            recovered = await client.post("/v1/score", json=SCORE)
    finally:
        await admin.aclose()
        await handle.aclose()
        emb.stop()
    assert healthy.json()["degraded"] is False
    assert slow.status_code == 200 and slow.json()["degraded_reasons"] == ["redis_unavailable"]
    assert slow_s < 0.5  # the 100 ms Redis budget, not the 0.8 s pause
    assert during.status_code == 503 and "redis_unavailable" in during.json()["reasons"]
    assert after.status_code == 200, after.json()
    assert recovered.json()["degraded"] is False
    assert recovered.json()["scores"] == healthy.json()["scores"]
