"""Bounded staleness on a running scorer: items re-projected by an incremental projector run (here
because their catalog rows changed) are served with their new projections and rows within
projection_poll_s, although the user's sequence, its projections and the rows were all cached."""
from __future__ import annotations

import asyncio
import time

import numpy as np

from cache.behavior_store import BehaviorStore
from cache.catalog_store import CatalogStore
from cache.projection_store import ProjectionStore
from cache.projector import project_version
from tests.service_world import NOW_MS, World, item_rows, reference_scores, running, world  # noqa: F401

USER, CANDS = 2, [5, 50, 500]
REQ = {"user_id": USER, "candidates": [{"item_id": c} for c in CANDS], "context": {"ts": NOW_MS}}
POLL_S = 0.2


async def test_an_incremental_projector_run_reaches_the_running_scorer_within_the_poll_interval(world: World):
    version = world.registry.active()
    model = world.models[version]
    client, keys = world.handle.client, world.keys
    settings = world.settings.model_copy(update={"projection_poll_s": POLL_S})
    async with running(settings) as (app, http):
        before = await http.post("/v1/score", json=REQ)
        again = await http.post("/v1/score", json=REQ)  # served from the caches now
        slot = app.state.ctx.engine.active
        assert slot.user_cache.stats()["hits"] >= 1 and slot.local_cache.stats()["size"] > 0
        old_want = (await reference_scores(world, version, USER, CANDS, NOW_MS))[0].scores[0].numpy()
        # the catalog changes for the user's 40 newest items (author and category), and the projector
        # re-projects exactly those, incrementally, as a catalog pipeline would
        block = (await BehaviorStore(client, keys, 2).read_newest([USER], 40))[0]
        changed = np.setdiff1d(block.item_id, CANDS)
        rows = item_rows(changed)
        rows[:, 1], rows[:, 2] = (rows[:, 1] + 37) % 100, (rows[:, 2] + 7) % 20
        cat = CatalogStore(client, keys, rows.shape[1])
        await cat.put(changed, rows)
        await project_version(model, version, changed, cat, ProjectionStore(client, keys, version, model.proj_dim),
                              incremental=True, progress=False)
        t_run = time.monotonic()
        new_want = (await reference_scores(world, version, USER, CANDS, NOW_MS))[0].scores[0].numpy()
        assert not np.allclose(old_want, new_want, atol=1e-4)  # the change is visible in the scores
        while True:
            r = await http.post("/v1/score", json=REQ)
            if np.allclose(r.json()["scores"], new_want, atol=1e-5, rtol=0):
                break
            assert time.monotonic() - t_run < POLL_S + 2.0, "the re-projection never reached the scorer"
            await asyncio.sleep(0.02)
        seen_after = time.monotonic() - t_run
    np.testing.assert_allclose(before.json()["scores"], old_want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(again.json()["scores"], old_want, atol=1e-5, rtol=0)
    assert not r.json()["degraded"]
    assert seen_after < POLL_S + 1.0, seen_after
