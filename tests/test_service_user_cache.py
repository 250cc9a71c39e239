"""The user sequence and catalog row caches behind /v1/score answer exactly what the uncached path
answers, while behaviors arrive, histories are rewritten, Redis fails mid-delta and models swap."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cache.behavior_store import BehaviorBlock, BehaviorStore, Event
from tests.service_world import ADMIN, NOW_MS, World, reference_scores, running, world  # noqa: F401

CANDS = [3, 77, 250, 599, 5]


@asynccontextmanager
async def cached_and_plain(w: World) -> AsyncIterator[tuple[object, object, object]]:
    """(cached app, its client, a client of the same service with both caches disabled), same Redis."""
    plain = w.settings.model_copy(update={"user_cache_mb": 0, "catalog_cache_capacity": 0})
    async with running(w.settings) as (app, cached), running(plain) as (plain_app, uncached):
        assert plain_app.state.ctx.engine.active.user_cache is None
        yield app, cached, uncached


def req(user: int, explain: bool = False) -> dict:
    return {"user_id": user, "candidates": [{"item_id": c} for c in CANDS], "context": {"ts": NOW_MS},
            "explain": explain}


async def same_answer(cached, plain, user: int, explain: bool = False) -> dict:
    a = await cached.post("/v1/score", json=req(user, explain))
    b = await plain.post("/v1/score", json=req(user, explain))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    ja, jb = a.json(), b.json()
    np.testing.assert_allclose(ja["scores"], jb["scores"], atol=1e-6, rtol=0)
    assert ja["degraded_reasons"] == jb["degraded_reasons"]
    if explain:
        assert [[s["item_id"] for s in c["selected"]] for c in ja["explain"]] == \
               [[s["item_id"] for s in c["selected"]] for c in jb["explain"]]
    return ja


def events(user: int, start: int, n: int, item=lambda i: (i * 37) % 600) -> list[Event]:
    return [Event(f"u{user}-{i}", user, item(i), NOW_MS - 1000 + i, np.array([i % 10 / 10, i % 2], np.float32))
            for i in range(start, start + n)]


def stats(app) -> dict[str, int]:
    return app.state.ctx.engine.active.user_cache.stats()


async def test_cached_scores_equal_uncached_while_behaviors_arrive(world: World):
    bs = BehaviorStore(world.handle.client, world.keys, 2)
    async with cached_and_plain(world) as (app, cached, plain):
        for user in (1, 2, 4):  # 300 = L, 57 < L (the window grows), 1000 > L (it slides)
            await same_answer(cached, plain, user)
            await same_answer(cached, plain, user)  # current: a hit
            await bs.append(events(user, 0, 5))
            await same_answer(cached, plain, user, explain=True)  # a delta of 5
            body = {"events": [{"event_id": e.event_id, "user_id": user, "item_id": e.item_id, "ts": e.ts,
                                "cross": {"play_ratio": float(e.cross[0]), "liked": float(e.cross[1])}}
                               for e in events(user, 5, 12)]}
            assert (await cached.post("/v1/events", json=body)).json()["new"] == 12
            await same_answer(cached, plain, user)  # a delta through the API
            assert (await cached.post("/v1/events", json=body)).json()["new"] == 0  # a replay changes nothing
            await same_answer(cached, plain, user)
        await bs.append(events(2, 100, 3, item=lambda i: 5000 + i))  # items unknown to the catalog
        j = await same_answer(cached, plain, 2)
        assert "catalog_miss" in j["degraded_reasons"]
        await bs.append(events(2, 200, 400))  # more than L at once: read in full
        await same_answer(cached, plain, 2)
        await same_answer(cached, plain, 9999)  # unknown user
        st = stats(app)
        metrics = (await cached.get("/metrics")).text
    assert st["hits"] >= 6 and st["deltas"] >= 6 and st["resets"] >= 1 and st["entries"] == 3
    assert f'twin_user_cache_lookups_total{{result="deltas"}} {float(st["deltas"])}' in metrics
    assert "twin_user_cache_bytes" in metrics and "twin_catalog_cache_hits_total" in metrics


async def test_a_history_rewritten_under_the_same_total_is_read_again(world: World):
    bs = BehaviorStore(world.handle.client, world.keys, 2)
    async with cached_and_plain(world) as (app, cached, plain):
        await same_answer(cached, plain, 1)
        [blk] = await bs.read_newest([1], 300)
        rewritten = BehaviorBlock((blk.item_id + 1) % 600, blk.ts, blk.cross[::-1].copy(), total=blk.total)
        await bs.write_history([1], [rewritten])
        await same_answer(cached, plain, 1)
        assert stats(app)["rewritten"] == 1


@pytest.mark.parametrize("failing", ["catalog", "projections"])
async def test_a_redis_failure_mid_delta_degrades_and_leaves_the_cache_consistent(world: World, monkeypatch,
                                                                                  failing: str):
    bs = BehaviorStore(world.handle.client, world.keys, 2)
    async with cached_and_plain(world) as (app, cached, plain):
        ctx = app.state.ctx
        slot = ctx.engine.active
        await same_answer(cached, plain, 1)
        total = slot.user_cache.lookup(1).total
        new = events(1, 0, 4)
        await bs.append(new)

        async def down(*a, **kw):
            raise RedisConnectionError("redis went away")

        if failing == "catalog":  # after read_since: the rows of the new items
            monkeypatch.setattr(slot.catalog_cache, "get", down)
            want_reason = "redis_unavailable"
        else:  # the new items' projections: Redis fails and nothing can compute them
            slot.local_cache.invalidate(np.array([e.item_id for e in new]))
            monkeypatch.setattr(slot.local_cache.store, "get", down)
            monkeypatch.setattr(slot.local_cache, "compute_fn", None)
            want_reason = "projection_default"
        r = await cached.post("/v1/score", json=req(1))
        assert r.status_code == 200 and want_reason in r.json()["degraded_reasons"], r.text
        assert slot.user_cache.lookup(1).total == total  # not updated from a failed fetch
        monkeypatch.undo()
        await ctx.health.check_once()  # the probe closes the breaker a failure may have tripped
        j = await same_answer(cached, plain, 1)
        assert j["degraded"] is False and slot.user_cache.lookup(1).total == total + 4


@pytest.mark.parametrize("prefill", [256, 0])
async def test_a_model_swap_starts_a_user_cache_of_its_own(world: World, prefill: int):
    """Cached sequences hold one version's projections: the new version never sees the old one's
    entries; it starts empty, or (swap_prefill_users) with the served users' sequences read for it."""
    v1 = world.registry.active()
    v2 = world.publish(seed=1)
    async with running(world.settings.model_copy(update={"swap_prefill_users": prefill})) as (app, client):
        await client.post("/v1/score", json=req(2))
        old = app.state.ctx.engine.active
        assert old.version == v1 and old.user_cache.stats()["entries"] == 1
        act = await client.post(f"/v1/models/{v2}/activate", headers={"Authorization": f"Bearer {ADMIN}"})
        assert act.status_code == 200
        new = app.state.ctx.engine.active
        before = new.user_cache.stats()
        assert new.version == v2 and new.user_cache is not old.user_cache and before["entries"] == (1 if prefill else 0)
        r = await client.post("/v1/score", json=req(2))
        after = new.user_cache.stats()
        assert (after["hits"], after["misses"] - before["misses"]) == ((1, 0) if prefill else (0, 1))
    assert r.json()["model_version"] == v2
    want, _ = await reference_scores(world, v2, 2, CANDS, NOW_MS)
    np.testing.assert_allclose(r.json()["scores"], want.scores[0].numpy(), atol=1e-5, rtol=0)
