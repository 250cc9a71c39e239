"""A malformed event is the client's fault: a 422 naming the field, before anything is written, with
readiness and every other request untouched. Only a real store outage may trip the breaker."""
from __future__ import annotations

import asyncio
import json

import pytest

from cache.behavior_store import BehaviorStore
from cache.connection import EmbeddedRedis, open_redis
from cache.layout import Keys
from tests.service_world import NOW_MS, World, build_world, running, world  # noqa: F401

USER = 91  # no history in the world: anything stored for it came from these tests
SCORE = {"user_id": 1, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}


def ev(i: int, **over) -> dict:
    return {"event_id": f"ok-{i}", "user_id": USER, "item_id": 3, "ts": NOW_MS + i,
            "cross": {"play_ratio": 0.5, "liked": 1}, **over}


BAD = [
    ("é" * 65, None, "event_id"),           # 65 characters, 130 bytes: over the store's 128
    ("\U0001F600" * 33, None, "event_id"),  # 33 emoji, 132 bytes
    ("\ud800", None, "event_id"),           # a lone surrogate: JSON allows it, UTF-8 does not
    ("e-big", 1e308, "play_ratio"),         # overflows float32 to inf
    ("e-big", 3.5e38, "play_ratio"),
    ("e-big", -3.5e38, "play_ratio"),
]


async def stored(world: World) -> int:
    return len((await BehaviorStore(world.handle.client, world.keys, 2).read_newest([USER], 100))[0])


@pytest.mark.parametrize("event_id,value,field", BAD, ids=[str(i) for i in range(len(BAD))])
async def test_a_bad_event_is_422_and_leaves_readiness_scores_and_the_log_untouched(world: World, event_id, value,
                                                                                    field):
    bad = ev(1, event_id=event_id) if value is None else ev(1, event_id=event_id, cross={"play_ratio": value})
    async with running(world.settings) as (_, client):
        for _ in range(3):  # a client that obeys "retry" must not get anywhere either
            r = await client.post("/v1/events", content=json.dumps({"events": [ev(0), bad]}),  # ASCII-escaped
                                  headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert "Retry-After" not in r.headers
        ready = await client.get("/health/ready")
        score = await client.post("/v1/score", json=SCORE)
    loc = ["body", "events", 1, "event_id"] if field == "event_id" else ["body", "events", 1, "cross", field]
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()
    assert ready.status_code == 200, ready.text
    assert score.status_code == 200 and score.json()["degraded"] is False, score.text
    assert await stored(world) == 0  # the valid event of the same batch was not written either


async def test_the_limits_themselves_are_accepted(world: World):
    edge = [ev(0, event_id="é" * 64), ev(1, event_id="x" * 128), ev(2, cross={"play_ratio": 3.4e38, "liked": -3.4e38})]
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/events", json={"events": edge})
    assert r.status_code == 200 and r.json() == {"accepted": 3, "new": 3}, r.text
    assert await stored(world) == 3


async def test_a_bug_in_the_write_path_is_a_logged_500_that_trips_nothing(world: World, monkeypatch, caplog):
    async def broken(self, events):
        raise ValueError("a check the schema should have made")

    monkeypatch.setattr(BehaviorStore, "append", broken)
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/events", json={"events": [ev(0)]})
        ready = await client.get("/health/ready")
        score = await client.post("/v1/score", json=SCORE)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 500 and r.json()["reason"] == "internal_error", r.text
    assert "Retry-After" not in r.headers
    assert any("a check the schema should have made" in (rec.exc_text or "") for rec in caplog.records)
    assert ready.status_code == 200 and score.status_code == 200 and score.json()["degraded"] is False
    assert 'twin_requests_total{code="500",endpoint="/v1/events"} 1.0' in metrics


async def test_a_store_that_refuses_the_write_is_503_without_tripping_the_breaker(tmp_path):
    emb = EmbeddedRedis(str(tmp_path / "redis"))  # private: the test sets its maxmemory
    url = f"unix://{emb.socket_path}"
    handle = await open_redis(url)
    world = await build_world(url, handle, Keys(prefix="svc", n_buckets=16), tmp_path / "models")
    try:
        async with running(world.settings) as (_, client):
            await handle.client.config_set("maxmemory-policy", "noeviction")
            await handle.client.config_set("maxmemory", 1)  # every write is refused with OOM
            r = await client.post("/v1/events", json={"events": [ev(0)]})
            await asyncio.sleep(0)
            ready = await client.get("/health/ready")
            await handle.client.config_set("maxmemory", 0)
            again = await client.post("/v1/events", json={"events": [ev(0)]})
    finally:
        await handle.aclose()
        emb.stop()
    assert r.status_code == 503 and r.json()["reason"] == "redis_refused" and r.headers["Retry-After"], r.text
    assert ready.status_code == 200, ready.text  # Redis answered: it is up
    assert again.status_code == 200 and again.json() == {"accepted": 1, "new": 1}
