"""Events name catalog items: an unknown item id is a 422 naming the event before anything is written
(it would degrade that user's scores from then on). And a write that times out is answered as what it
is: not acknowledged, maybe stored, safe to retry."""
from __future__ import annotations

import asyncio
import socket
import time

from cache.behavior_store import BehaviorStore
from cache.connection import EmbeddedRedis, open_redis
from cache.layout import Keys
from tests.service_world import N_ITEMS, NOW_MS, World, build_world, running, world  # noqa: F401

USER = 93  # no history in the world


def ev(i: int, item: int) -> dict:
    return {"event_id": f"it-{i}", "user_id": USER, "item_id": item, "ts": NOW_MS + i, "cross": {"liked": 1}}


async def stored(client, keys) -> list[int]:
    return (await BehaviorStore(client, keys, 2).read_newest([USER], 100))[0].item_id.tolist()


async def test_an_event_for_an_item_not_in_the_catalog_is_422_and_nothing_is_written(world: World):
    async with running(world.settings) as (_, client):
        r = await client.post("/v1/events", json={"events": [ev(0, 3), ev(1, N_ITEMS + 5), ev(2, 2**62)]})
        ready = await client.get("/health/ready")
        ok = await client.post("/v1/events", json={"events": [ev(0, 3)]})
        score = await client.post("/v1/score", json={"user_id": USER, "candidates": [{"item_id": 4}],
                                                     "context": {"ts": NOW_MS + 10}})
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "events", 1, "item_id"], ["body", "events", 2, "item_id"]]
    assert "Retry-After" not in r.headers and ready.status_code == 200
    assert ok.status_code == 200 and ok.json() == {"accepted": 1, "new": 1}, ok.text
    assert await stored(world.handle.client, world.keys) == [3]  # the batch with bad items wrote nothing
    assert score.status_code == 200 and score.json()["degraded"] is False, score.text


def _server_busy(path: str) -> bool:
    """True once the server stops answering (it is inside DEBUG SLEEP): a raw PING, no client retries."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(0.05)
        s.sendall(b"PING\r\n")
        try:
            return s.recv(16) == b""
        except TimeoutError:
            return True


async def test_a_write_that_times_out_says_it_may_be_stored_and_a_retry_stores_it_once(tmp_path):
    emb = EmbeddedRedis(str(tmp_path / "redis"))  # private: the test puts the server to sleep
    url = f"unix://{emb.socket_path}"
    handle = await open_redis(url)
    keys = Keys(prefix="svc", n_buckets=16)
    world = await build_world(url, handle, keys, tmp_path / "models")
    settings = world.settings.model_copy(update={"events_timeout_ms": 300.0})
    sleeper = socket.socket(socket.AF_UNIX)
    try:
        async with running(settings) as (_, client):
            first = await client.post("/v1/events", json={"events": [ev(0, 3)]})  # item 3's row is now cached
            sleeper.connect(emb.socket_path)
            sleeper.sendall(b"DEBUG SLEEP 1.5\r\n")  # the server stops answering; our write queues behind it
            give_up = time.monotonic() + 1.0
            while not await asyncio.to_thread(_server_busy, emb.socket_path):
                assert time.monotonic() < give_up, "the server never went to sleep"
            t0 = time.perf_counter()
            late = await client.post("/v1/events", json={"events": [ev(1, 3)]})
            waited = time.perf_counter() - t0
            for _ in range(100):  # after the sleep the script runs: the unacknowledged event is stored
                if len(await stored(handle.client, keys)) == 2:
                    break
                await asyncio.sleep(0.05)
            retry = await client.post("/v1/events", json={"events": [ev(1, 3)]})
    finally:
        sleeper.close()
        await handle.aclose()
        emb.stop()
    assert first.status_code == 200
    assert late.status_code == 503 and late.json()["reason"] == "redis_timeout", late.text
    assert "may or may not be stored" in late.json()["detail"] and "retrying is safe" in late.json()["detail"]
    assert waited < 1.2  # the 300 ms budget, not the server's 1.5 s sleep
    assert retry.status_code == 200 and retry.json() == {"accepted": 1, "new": 0}, retry.text  # stored once
