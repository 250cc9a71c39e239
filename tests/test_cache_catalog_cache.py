"""CatalogRowCache against a real Redis: hits answer without Redis, misses read through in one round
trip, rows expire after the TTL, capacity evicts the least recently used, failures leave no trace."""
import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cache.catalog_cache import CatalogRowCache
from cache.catalog_store import CatalogStore

F = 4


def rows(ids, version: int = 0) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    return np.stack([ids, ids % 11 + version, ids % 7, ids * 3 + version], axis=1)


@pytest.fixture
async def catalog(redis_handle, keys, counting_client):
    client = counting_client(redis_handle.client)
    store = CatalogStore(client, keys, F)
    await store.put(np.arange(200, dtype=np.int64), rows(np.arange(200)))
    return store, client


async def test_misses_read_through_once_and_hits_need_no_redis(catalog):
    store, client = catalog
    cache = CatalogRowCache(store, capacity=100, ttl_s=60)
    ids = np.array([5, 9, 5, 300, 9], np.int64)  # duplicates and an id the catalog lacks
    client.trips = 0
    raw, found = await cache.get(ids)
    assert client.trips == 1
    np.testing.assert_array_equal(raw[found], rows(ids[found]))
    assert found.tolist() == [True, True, True, False, True] and not raw[3].any()
    raw2, found2 = await cache.get(np.array([9, 5], np.int64))
    assert client.trips == 1  # served from memory
    np.testing.assert_array_equal(raw2, rows([9, 5]))
    assert found2.all()
    st = cache.stats()
    assert st["hits"] == 2 and st["misses"] == 5 and st["size"] == 2  # 300 is not cached


async def test_an_id_added_to_the_catalog_is_seen_at_once(catalog):
    store, _ = catalog
    cache = CatalogRowCache(store, capacity=100, ttl_s=60)
    assert not (await cache.get(np.array([250], np.int64)))[1][0]
    await store.put(np.array([250], np.int64), rows([250]))
    raw, found = await cache.get(np.array([250], np.int64))
    assert found[0] and (raw[0] == rows([250])[0]).all()


async def test_rows_are_read_again_after_the_ttl_and_on_invalidate(catalog):
    store, client = catalog
    now = [0.0]
    cache = CatalogRowCache(store, capacity=100, ttl_s=60, clock=lambda: now[0])
    await cache.get(np.array([1, 2], np.int64))
    await store.put(np.array([1, 2], np.int64), rows([1, 2], version=1))  # the catalog changes
    now[0] = 59.0
    raw, _ = await cache.get(np.array([1, 2], np.int64))
    np.testing.assert_array_equal(raw, rows([1, 2]))  # within the TTL: the cached rows
    now[0] = 60.5
    client.trips = 0
    raw, _ = await cache.get(np.array([1, 2], np.int64))
    np.testing.assert_array_equal(raw, rows([1, 2], version=1))
    assert client.trips == 1 and cache.stats()["expired"] == 2 and cache.stats()["size"] == 2
    await store.put(np.array([2], np.int64), rows([2], version=2))
    cache.invalidate(np.array([2, 777], np.int64))
    raw, _ = await cache.get(np.array([1, 2], np.int64))
    np.testing.assert_array_equal(raw, np.concatenate([rows([1], 1), rows([2], 2)]))


async def test_capacity_evicts_the_least_recently_used(catalog):
    store, _ = catalog
    cache = CatalogRowCache(store, capacity=32, ttl_s=60, evict_fraction=1 / 4)
    await cache.get(np.arange(32, dtype=np.int64))
    await cache.get(np.arange(8, dtype=np.int64))  # 0..7 are now the most recently used
    raw, found = await cache.get(np.arange(100, 110, dtype=np.int64))  # 10 more: evicts 10 of 8..31
    np.testing.assert_array_equal(raw, rows(np.arange(100, 110)))
    assert found.all()
    st = cache.stats()
    assert st["size"] == 32 and st["evictions"] == 10
    before = cache.stats()["hits"]
    await cache.get(np.arange(8, dtype=np.int64))
    assert cache.stats()["hits"] - before == 8  # the recently used survived
    raw, found = await cache.get(np.arange(200, dtype=np.int64))  # more than the capacity at once
    np.testing.assert_array_equal(raw, rows(np.arange(200)))
    assert found.all()
    assert cache.stats()["size"] <= 32


async def test_a_redis_failure_propagates_and_caches_nothing(catalog, monkeypatch):
    store, _ = catalog
    cache = CatalogRowCache(store, capacity=100, ttl_s=60)

    async def down(ids):
        raise RedisConnectionError("redis went away")

    monkeypatch.setattr(store, "get", down)
    with pytest.raises(RedisConnectionError):
        await cache.get(np.array([1, 2], np.int64))
    assert cache.stats()["size"] == 0
    monkeypatch.undo()
    raw, found = await cache.get(np.array([1, 2], np.int64))
    np.testing.assert_array_equal(raw, rows([1, 2]))
    assert found.all()


def test_settings_are_checked(redis_handle, keys):
    store = CatalogStore(redis_handle.client, keys, F)
    with pytest.raises(ValueError, match="capacity"):
        CatalogRowCache(store, 0, 60)
    with pytest.raises(ValueError, match="ttl_s"):
        CatalogRowCache(store, 10, 0)
