"""CatalogStore and ProjectionStore against a real Redis: round trips, misses, versions, GC."""
import numpy as np
import pytest

from cache.catalog_store import CatalogStore
from cache.projection_store import ProjectionStore, delete_version, list_versions

D = 12


def rand_vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float16)


async def test_catalog_round_trip_in_request_order_with_misses(redis_handle, keys):
    cat = CatalogStore(redis_handle.client, keys, n_features=3)
    ids = np.arange(0, 1000, 7, dtype=np.int64)
    raw = np.stack([ids, ids * 3, np.full_like(ids, -5)], 1)  # negative raw values are fine
    await cat.put(ids, raw)
    q = np.array([700, 1, 0, 700, 2**62], np.int64)  # repeats and unknown ids
    got, found = await cat.get(q)
    assert found.tolist() == [True, False, True, True, False]
    assert got.tolist() == [[700, 2100, -5], [0, 0, 0], [0, 0, -5], [700, 2100, -5], [0, 0, 0]]
    assert (await cat.all_ids()).tolist() == ids.tolist()
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        await cat.put(ids, raw[:, :2])


async def test_projection_get_is_one_round_trip_and_exact(redis_handle, keys, counting_client):
    counting = counting_client(redis_handle.client)  # a wrapper: reads through a redis-py pipeline
    ps = ProjectionStore(counting, keys, "v1", D)
    ids = np.random.default_rng(1).choice(10**9, 2000, replace=False).astype(np.int64)
    vecs = rand_vecs(2000, 0)
    await ps.put(ids, vecs)
    counting.trips = 0
    got, found = await ps.get(ids[::-1])
    assert counting.trips == 1 and found.all()
    assert got.dtype == np.float16 and got.tobytes() == vecs[::-1].tobytes()


async def test_single_node_get_is_one_write_and_matches_the_pipeline(redis_handle, keys, counting_client, monkeypatch):
    """The plain client reads through execute_packed (pre-packed HMGETs, values taken from the
    socket's bytes); found, missing and repeated ids come back exactly as through a pipeline."""
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    via_pipeline = ProjectionStore(counting_client(redis_handle.client), keys, "v1", D)
    ids = np.random.default_rng(2).choice(10**9, 3000, replace=False).astype(np.int64)
    await ps.put(ids, rand_vecs(3000, 3))
    conn_class = redis_handle.client.connection_pool.connection_class
    writes = []
    orig = conn_class.send_packed_command

    async def counted(self, command, *a, **kw):
        writes.append(command)
        return await orig(self, command, *a, **kw)

    monkeypatch.setattr(conn_class, "send_packed_command", counted)
    for q in (ids[::-1], np.concatenate([ids[:50], [7, 2**62], ids[:50]])):  # all found; misses + repeats
        writes.clear()
        got, found = await ps.get(q)
        assert len(writes) == 1 and len(writes[0]) == np.unique(q % keys.n_buckets).size  # an HMGET per bucket
        want, want_found = await via_pipeline.get(q)
        assert got.tobytes() == want.tobytes() and found.tolist() == want_found.tolist()
    assert found.sum() == 100


async def test_ids_near_int64_max_are_exact_fields(redis_handle, keys):
    """Ids up to 2^63-1 travel as exact decimal fields: 2^63-1 and 2^63-17 share a bucket (mod 16)
    and the same float64, so any float step on the way would mix up the stored and missing one."""
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    top, other = 2**63 - 1, 2**63 - 17
    assert float(top) == float(other) and top % keys.n_buckets == other % keys.n_buckets
    vecs = rand_vecs(2, 4)
    await ps.put(np.array([top, 0], np.int64), vecs)
    got, found = await ps.get(np.array([other, top, 0], np.int64))
    assert found.tolist() == [False, True, True]
    assert not got[0].any() and got[1:].tobytes() == vecs.tobytes()
    assert await redis_handle.client.hexists(keys.proj_bucket("v1", top % keys.n_buckets), b"9223372036854775807")


async def test_two_versions_side_by_side_never_mix(redis_handle, keys):
    a = ProjectionStore(redis_handle.client, keys, "20260101-0001", D)
    b = ProjectionStore(redis_handle.client, keys, "20260101-0002", D)
    ids = np.arange(300, dtype=np.int64)
    va, vb = rand_vecs(300, 1), rand_vecs(300, 2)
    await a.put(ids, va)
    await b.put(ids[:100], vb[:100])
    got_a, fa = await a.get(ids)
    got_b, fb = await b.get(ids)
    assert fa.all() and got_a.tobytes() == va.tobytes()
    assert fb.sum() == 100 and got_b[:100].tobytes() == vb[:100].tobytes() and not got_b[100:].any()
    assert await list_versions(redis_handle.client, keys) == ["20260101-0001", "20260101-0002"]
    assert await delete_version(redis_handle.client, keys, "20260101-0001") == keys.n_buckets
    assert not (await a.get(ids))[1].any()
    assert (await b.get(ids))[1].sum() == 100
    assert await list_versions(redis_handle.client, keys) == ["20260101-0002"]


async def test_corrupt_value_width_is_reported_with_its_key(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    await redis_handle.client.hset(keys.proj_bucket("v1", 5 % keys.n_buckets), 5, b"short")
    with pytest.raises(ValueError, match="item 5 .* holds 5 bytes, expected 24"):
        await ps.get(np.array([5]))


async def test_marker_absent_until_every_bucket_is_done(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    assert await ps.read_marker() is None
    await ps.mark_done({b: (1, b) for b in range(keys.n_buckets - 1)})
    assert await ps.write_marker_if_complete() is None and await ps.read_marker() is None
    await ps.mark_done({keys.n_buckets - 1: (1, 2**64 - 1)})
    m = await ps.write_marker_if_complete()
    assert m == await ps.read_marker()
    total = (sum(range(keys.n_buckets - 1)) + 2**64 - 1) % 2**64
    assert m["count"] == keys.n_buckets and m["checksum"] == f"{total:016x}" and m["dim"] == D


async def test_bad_shapes_are_refused(redis_handle, keys):
    ps = ProjectionStore(redis_handle.client, keys, "v1", D)
    with pytest.raises(ValueError, match=r"vecs must have shape \(2, 12\)"):
        await ps.put(np.array([1, 2]), np.zeros((2, D + 1), np.float16))
    with pytest.raises(ValueError, match="unique"):
        await ps.put(np.array([1, 1]), np.zeros((2, D), np.float16))
    with pytest.raises(ValueError, match="item_ids must be in"):
        await ps.get(np.array([-3]))
    with pytest.raises(ValueError, match="version"):
        ProjectionStore(redis_handle.client, keys, "bad:version", D)
