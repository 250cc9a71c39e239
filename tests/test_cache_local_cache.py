"""LocalProjectionCache and its vectorized IdIndex: hit, miss, fill, compute, default, eviction,
Redis outage and concurrent gathers, all against a real Redis."""
import asyncio

import numpy as np
import pytest
import torch

from cache.catalog_store import CatalogStore
from cache.connection import RedisOptions, open_redis
from cache.id_index import IdIndex
from cache.layout import Keys
from cache.local_cache import LocalProjectionCache
from cache.projection_store import ProjectionStore

D = 8


def vec_of(ids: np.ndarray) -> np.ndarray:
    """A distinct, checkable vector per id: float16 [N, D]."""
    return (np.asarray(ids)[:, None] % 1000 + np.arange(D)[None, :] / 8).astype(np.float16)


def compute_from_raw(raw: np.ndarray) -> np.ndarray:
    return vec_of(raw[:, 0] + 1)  # differs from vec_of(id): tells computed rows apart


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def device(request) -> str:
    """The slab's device: numpy-backed on the CPU, torch ops on CUDA (two code paths)."""
    return request.param


@pytest.fixture
async def stores(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    cat = CatalogStore(redis_handle.client, keys, n_features=2)
    ids = np.arange(100, dtype=np.int64)
    await ps.put(ids, vec_of(ids))  # ids 0..99 projected
    cat_ids = np.arange(200, dtype=np.int64)  # ids 100..199 only in the catalog
    await cat.put(cat_ids, np.stack([cat_ids, cat_ids * 2], 1))
    return ps, cat


def test_id_index_matches_a_dict_under_random_churn():
    rng = np.random.default_rng(0)
    idx, ref = IdIndex(5000), {}
    for step in range(40):
        cand = rng.choice(2**62, 800, replace=False) if step % 3 else rng.integers(0, 3000, 800)
        cand = np.unique(cand)
        new = cand[idx.lookup(cand) < 0][: 5000 - idx.size]
        vals = rng.integers(0, 2**31 - 1, new.size).astype(np.int32)
        idx.insert(new, vals)
        ref.update(zip(new.tolist(), vals.tolist()))
        if ref and step % 2:
            drop = rng.choice(np.array(list(ref)), min(len(ref), 600), replace=False)
            idx.delete(drop)
            for k in drop.tolist():
                ref.pop(k)
        probe = np.concatenate([np.array(list(ref), np.int64), rng.integers(0, 2**62, 500)])
        want = np.array([ref.get(k, -1) for k in probe.tolist()], np.int32)
        np.testing.assert_array_equal(idx.lookup(probe), want)
        assert idx.size == len(ref)
    with pytest.raises(ValueError, match="over capacity"):
        idx.insert(np.arange(10**15, 10**15 + 5001), np.zeros(5001, np.int32))


def test_id_index_keys_racing_for_one_position_all_land():
    """Many keys with the same home position in one insert: one wins each free position per
    probe step, the rest move on; every key must be found afterwards, and deleted positions reused."""
    idx = IdIndex(64)
    cand = np.arange(0, 200_000, dtype=np.int64)
    home = idx._home(cand)
    same = cand[home == home[0]][:20]  # 20 keys, one home position
    assert same.size == 20
    idx.insert(same, np.arange(20, dtype=np.int32))
    np.testing.assert_array_equal(idx.lookup(same), np.arange(20))
    idx.delete(same[::2])
    np.testing.assert_array_equal(idx.lookup(same), np.where(np.arange(20) % 2, np.arange(20), -1))
    idx.insert(same[::2], np.arange(100, 110, dtype=np.int32))  # into the DELETED positions
    np.testing.assert_array_equal(idx.lookup(same[::2]), np.arange(100, 110))
    assert idx.size == 20 and idx._deleted == 0
    idx.clear()
    assert idx.size == 0 and (idx.lookup(same) == -1).all()
    idx.insert(same, np.arange(20, dtype=np.int32))
    np.testing.assert_array_equal(idx.lookup(same), np.arange(20))


async def test_miss_then_hit_returns_redis_values_on_the_device(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(64, D, device, ps, cat, compute_from_raw)
    ids = np.array([3, 9, 3, 42], np.int64)
    r1 = await lc.gather(ids)
    assert (r1.hits, r1.misses, r1.filled_from_redis, r1.computed, r1.defaulted) == (0, 4, 3, 0, 0)
    assert r1.vecs.dtype == torch.float16 and r1.vecs.device.type == device
    np.testing.assert_array_equal(r1.vecs.cpu().numpy(), vec_of(ids))
    r2 = await lc.gather(ids)
    assert (r2.hits, r2.misses) == (4, 0)
    np.testing.assert_array_equal(r2.vecs.cpu().numpy(), vec_of(ids))
    assert lc.stats() | {} == {"hits": 4, "misses": 4, "fills": 3, "computed": 0, "defaulted": 0, "evictions": 0,
                               "redis_errors": 0, "compute_errors": 0, "size": 3, "capacity": 64}


async def test_absent_from_redis_is_computed_from_the_catalog_and_written_back(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(64, D, device, ps, cat, compute_from_raw)
    r = await lc.gather(np.array([150, 5], np.int64))
    assert (r.filled_from_redis, r.computed, r.defaulted) == (1, 1, 0)
    np.testing.assert_array_equal(r.vecs.cpu().numpy(), np.concatenate([vec_of([151]), vec_of([5])]))
    back, found = await ps.get(np.array([150]))
    assert found.all() and back.tobytes() == vec_of([151]).tobytes()


async def test_unknown_everywhere_gets_the_zero_vector_and_is_not_cached(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(64, D, device, ps, cat, compute_from_raw)
    for _ in range(2):
        r = await lc.gather(np.array([7, 10**9], np.int64))
        assert r.defaulted == 1
        assert not r.vecs[1].any() and torch.equal(r.vecs[0].cpu(), torch.from_numpy(vec_of([7])[0]))
    assert lc.stats()["defaulted"] == 2 and lc.stats()["size"] == 1


async def test_failing_compute_fn_defaults_instead_of_raising(stores, device):
    ps, cat = stores

    def broken(raw):
        raise RuntimeError("model exploded")

    lc = LocalProjectionCache(64, D, device, ps, cat, broken)
    r = await lc.gather(np.array([150], np.int64))
    assert r.defaulted == 1 and lc.stats()["compute_errors"] == 1


async def test_eviction_is_bulk_lru_and_keeps_results_correct(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(32, D, device, ps, cat, None, evict_fraction=1 / 4)
    hot = np.arange(0, 8, dtype=np.int64)
    await lc.gather(hot)
    for lo in range(10, 88, 12):  # ids < 100 are all in Redis
        await lc.gather(hot)  # keep the hot set recently used
        batch = np.arange(lo, lo + 12, dtype=np.int64)
        r = await lc.gather(batch)
        np.testing.assert_array_equal(r.vecs.cpu().numpy(), vec_of(batch))
        assert lc.stats()["size"] <= 32
    assert lc.stats()["evictions"] >= 8 + 7 * 12 - 32
    r = await lc.gather(hot)
    assert r.hits == 8  # the recently used ones survived


async def test_a_full_cache_evicts_a_bulk_of_capacity_times_fraction(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(32, D, device, ps, cat, None, evict_fraction=1 / 4)
    await lc.gather(np.arange(32, dtype=np.int64))
    assert lc.stats()["size"] == 32 and lc.stats()["evictions"] == 0
    await lc.gather(np.array([50], np.int64))  # needs one slot, frees 8
    assert lc.stats()["evictions"] == 8 and lc.stats()["size"] == 32 - 8 + 1


async def test_a_cold_result_is_not_changed_by_later_evictions(stores, device):
    """An all-miss gather answers with the fetched rows themselves (no copy); the slab gets its own
    copy, so evicting and refilling those slots must leave the earlier answer intact."""
    ps, cat = stores
    lc = LocalProjectionCache(8, D, device, ps, cat, None, evict_fraction=1)
    first = await lc.gather(np.arange(8, dtype=np.int64))
    await lc.gather(np.arange(8, 16, dtype=np.int64))  # evicts all 8 and refills their slots
    assert lc.stats()["evictions"] == 8
    np.testing.assert_array_equal(first.vecs.cpu().numpy(), vec_of(np.arange(8)))


async def test_clear_empties_the_cache_and_every_slot_is_usable_again(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(16, D, device, ps, cat, None)
    await lc.gather(np.arange(10, dtype=np.int64))
    lc.clear()
    assert lc.stats()["size"] == 0
    r = await lc.gather(np.arange(4, 20, dtype=np.int64))  # all 16 slots, none evicted
    assert (r.hits, r.misses) == (0, 16) and lc.stats()["size"] == 16 and lc.stats()["evictions"] == 0
    r = await lc.gather(np.arange(4, 20, dtype=np.int64))
    assert r.hits == 16
    np.testing.assert_array_equal(r.vecs.cpu().numpy(), vec_of(np.arange(4, 20)))


async def test_more_ids_than_capacity_in_one_gather_still_answers_all(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(10, D, device, ps, cat, None)
    ids = np.arange(50, dtype=np.int64)
    r = await lc.gather(ids)
    np.testing.assert_array_equal(r.vecs.cpu().numpy(), vec_of(ids))
    assert lc.stats()["size"] == 10


async def test_concurrent_gathers_are_consistent(stores, device):
    ps, cat = stores
    lc = LocalProjectionCache(40, D, device, ps, cat, compute_from_raw)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 100, 30) for _ in range(30)]
    results = await asyncio.gather(*(lc.gather(b) for b in batches))
    for b, r in zip(batches, results):
        np.testing.assert_array_equal(r.vecs.cpu().numpy(), vec_of(b))
    s = lc.stats()
    assert s["hits"] + s["misses"] == 900 and s["size"] <= 40


async def test_redis_outage_serves_hits_and_defaults_misses(redis_server, device):
    srv = redis_server()
    opts = RedisOptions(socket_timeout=0.2, connect_timeout=0.2, retries=1, backoff_cap=0.05)
    h = await open_redis(f"redis://127.0.0.1:{srv.port}/0", options=opts)
    try:
        keys = Keys(prefix="outage", n_buckets=4)
        ps, cat = ProjectionStore(h.client, keys, "v1", D), CatalogStore(h.client, keys, 2)
        await ps.put(np.arange(10), vec_of(np.arange(10)))
        lc = LocalProjectionCache(16, D, device, ps, cat, compute_from_raw)
        await lc.gather(np.arange(5))
        srv.stop()
        r = await lc.gather(np.arange(8))
        assert (r.hits, r.defaulted) == (5, 3)
        np.testing.assert_array_equal(r.vecs[:5].cpu().numpy(), vec_of(np.arange(5)))
        assert not r.vecs[5:].any() and lc.stats()["redis_errors"] >= 1
    finally:
        await h.aclose()


def test_bad_configuration_is_refused(stores):
    ps, cat = stores
    with pytest.raises(ValueError, match="capacity"):
        LocalProjectionCache(0, D, "cpu", ps, cat, None)
    with pytest.raises(ValueError, match="dim 9"):
        LocalProjectionCache(8, 9, "cpu", ps, cat, None)
