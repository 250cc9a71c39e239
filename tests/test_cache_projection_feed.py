"""The projection change feed (P:v:V:gen, P:v:V:changed) that running scorers poll: incremental runs
list their ids under a new generation, full runs raise the floor, trimming raises it too."""
from __future__ import annotations

import numpy as np

from cache.catalog_store import CatalogStore
from cache.projection_store import ProjectionStore, delete_version
from cache.projector import project_version
from tests.service_world import item_rows
from tests.twin_factory import tiny_model

N = 200


async def test_generations_list_changed_ids_and_resets_raise_the_floor(redis_handle, keys):
    model = tiny_model()
    ids = np.arange(N, dtype=np.int64)
    rows = item_rows(ids)
    cat = CatalogStore(redis_handle.client, keys, rows.shape[1])
    await cat.put(ids, rows)
    ps = ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim)
    assert await ps.generation() == (0, 0)
    await project_version(model, "v1", None, cat, ps, progress=False)  # full run: a reset
    g1, f1 = await ps.generation()
    assert g1 > 0 and f1 == g1
    stats = await project_version(model, "v1", np.array([7, 9, 7]), cat, ps, incremental=True, progress=False)
    g2, f2 = await ps.generation()
    assert stats["generation"] == g2 > g1 and f2 == f1
    assert sorted((await ps.changed_since(g1, g2)).tolist()) == [7, 9]
    await ps.note_changed(np.array([9, 11]))
    g3, _ = await ps.generation()
    assert sorted((await ps.changed_since(g2, g3)).tolist()) == [9, 11]  # 9's newest change
    assert sorted((await ps.changed_since(g1, g3)).tolist()) == [7, 9, 11]
    assert await redis_handle.client.zscore(keys.proj_changed("v1"), "9") == g3


async def test_trimming_the_feed_raises_the_floor_past_what_was_cut(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", 8)
    first = await ps.note_changed(np.arange(5))
    second = await ps.note_changed(np.arange(10, 14), cap=6)  # 9 listed, cap 6: generation `first` goes
    gen, floor = await ps.generation()
    assert gen == second and floor == first  # a scorer that knew less than `first` must drop everything
    assert sorted((await ps.changed_since(floor, gen)).tolist()) == [10, 11, 12, 13]


async def test_a_version_deleted_and_projected_again_reads_as_a_reset(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", 8)
    for i in range(20):  # changes in quick succession: generations run ahead of the clock (+1 each)
        known = await ps.note_changed(np.arange(3) + i)
    await delete_version(redis_handle.client, keys, "v1")
    assert await ps.generation() == (0, 0)
    again = await ps.note_reset()
    gen, floor = await ps.generation()
    assert gen == again > known and floor > known


async def test_a_gather_that_read_before_an_invalidation_does_not_put_its_rows_back(redis_handle, keys):
    import asyncio

    from cache.local_cache import LocalProjectionCache

    ps = ProjectionStore(redis_handle.client, keys, "v1", 8)
    await ps.put(np.arange(4), np.ones((4, 8), np.float16))
    cache = LocalProjectionCache(16, 8, "cpu", ps, None, None)
    read, release = asyncio.Event(), asyncio.Event()
    real_get = ps.get

    async def slow_get(ids):
        out = await real_get(ids)  # the old values, read before the projector's write below
        read.set()
        await release.wait()
        return out

    ps.get = slow_get
    gathering = asyncio.create_task(cache.gather(np.arange(4)))
    await read.wait()
    await ps.put(np.arange(4), np.full((4, 8), 2, np.float16))  # re-projected ...
    cache.invalidate(np.arange(4))                               # ... and announced
    release.set()
    await gathering
    ps.get = real_get
    assert cache.stats()["size"] == 0  # the stale rows were not cached
    assert (await cache.gather(np.arange(4))).vecs.float().eq(2).all()
