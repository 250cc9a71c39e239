"""BehaviorStore.read_since (real Redis) and the user sequence cache: deltas rebuild exactly what a full
read gives, rewrites are caught, the cache is bounded by bytes (LRU) and by age."""
import numpy as np
import pytest
import torch

from cache.behavior_store import BehaviorBlock, BehaviorStore, Event
from cache.connection import open_redis
from cache.layout import Keys
from cache.user_sequence_cache import ENTRY_OVERHEAD_BYTES, UserSequence, UserSequenceCache, extend, recent_window
from tests.test_cache_cluster import cluster_url  # noqa: F401 - the 3-master cluster fixture

J, F, D = 2, 3, 4


def ev(i: int, user: int = 1) -> Event:
    return Event(f"e-{user}-{i}", user, 1000 + i, 10_000 + i, np.array([i / 10, i % 2], np.float32))


def proj_of(ids: np.ndarray) -> torch.Tensor:
    """A stand-in projection per item id: float16 [N, D] (row = id, id + 1, ...)."""
    return (torch.from_numpy(np.asarray(ids, np.int64))[:, None] + torch.arange(D)).half()


def rows_of(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids, ids % 7, ids % 5], axis=1).astype(np.int64)  # [N, F]


def sequence(new: BehaviorBlock, newest: bytes, base: UserSequence | None, L: int, S: int,
             now: float = 0.0) -> UserSequence:
    """What the fetch builds: the window's rows (all in the catalog here), projections of the new items."""
    rows, found, need = recent_window(base, new.item_id, S, L, F)
    rows[need], found[need] = rows_of(rows[need, 0]), True
    return extend(base, new, proj_of(new.item_id), rows, found, newest, L, now)


def assert_same(a: UserSequence, b: UserSequence) -> None:
    for name in ("item_id", "ts", "cross", "recent", "recent_found"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert torch.equal(a.seq_proj, b.seq_proj) and a.total == b.total and a.newest == b.newest


# ---- read_since ----------------------------------------------------------------------------------
async def test_read_since_without_a_known_total_is_the_newest_window(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(i) for i in range(20)])
    since = await bs.read_since(1, -1, 8)
    [ref] = await bs.read_newest([1], 8)
    assert since.full and since.anchor is None and since.block.total == 20
    np.testing.assert_array_equal(since.block.item_id, ref.item_id)
    np.testing.assert_array_equal(since.block.cross, ref.cross)
    assert since.newest == np.frombuffer(since.newest, bs.dtype).tobytes()
    assert int(np.frombuffer(since.newest, bs.dtype)["item_id"][0]) == 1019


async def test_read_since_returns_the_appended_records_and_the_anchor_in_one_round_trip(redis_handle, keys,
                                                                                        counting_client):
    client = counting_client(redis_handle.client)
    bs = BehaviorStore(client, keys, n_cross=J)
    await bs.append([ev(i) for i in range(10)])
    before = await bs.read_since(1, -1, 8)
    await bs.append([ev(i) for i in range(10, 13)])
    client.trips = 0
    since = await bs.read_since(1, 10, 8)
    assert client.trips == 1
    assert not since.full and since.block.total == 13
    assert since.block.item_id.tolist() == [1012, 1011, 1010]  # newest first
    assert since.anchor == before.newest  # the record just older than the delta: the old newest
    idle = await bs.read_since(1, 13, 8)
    assert len(idle.block) == 0 and idle.anchor == since.newest and idle.newest == since.newest


@pytest.mark.parametrize("known, why", [(3, "n or more appended"), (50, "the count went down")])
async def test_read_since_falls_back_to_the_full_window(redis_handle, keys, known, why):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(i) for i in range(20)])
    since = await bs.read_since(1, known, 8)
    assert since.full, why
    assert since.block.item_id.tolist() == list(range(1019, 1011, -1))


async def test_read_since_sees_a_history_rewritten_under_the_same_total(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(i) for i in range(10)])
    before = await bs.read_since(1, -1, 8)
    blk = before.block
    await bs.write_history([1], [BehaviorBlock(blk.item_id + 1, blk.ts, blk.cross, total=10)])
    since = await bs.read_since(1, 10, 8)
    assert not since.full and len(since.block) == 0 and since.anchor != before.newest


async def test_read_since_of_a_log_shorter_than_the_delta_has_no_usable_anchor(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    blk = BehaviorBlock(np.array([5, 4], np.int64), np.array([50, 40], np.int64), np.zeros((2, J), np.float32), 9)
    await bs.write_history([1], [blk])  # count 9, but only 2 records
    since = await bs.read_since(1, 6, 8)  # 3 "appended" since 6, the log holds 2
    assert not since.full and since.anchor is None
    fresh = await bs.read_since(1, 7, 8)  # exactly the 2 the log holds, nothing older
    assert fresh.anchor == b"" and fresh.block.item_id.tolist() == [5, 4]


async def test_read_since_survives_a_flushed_script_cache_and_checks_n(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(0)])
    await bs.read_since(1, -1, 4)
    await redis_handle.client.script_flush()
    assert (await bs.read_since(1, 0, 4)).block.item_id.tolist() == [1000]
    with pytest.raises(ValueError, match="n must be >= 1"):
        await bs.read_since(1, 0, 0)


async def test_read_since_routes_by_the_user_hash_tag_on_a_cluster(cluster_url):  # noqa: F811
    url, _ = cluster_url
    h = await open_redis(url)
    try:
        bs = BehaviorStore(h.client, Keys(prefix="cls", n_buckets=16), n_cross=J)
        await bs.append([ev(i, user=u) for u in range(20) for i in range(5)])
        for u in range(20):  # 20 users: their keys sit on all three masters
            full = await bs.read_since(u, -1, 8)
            assert full.full and full.block.total == 5
            await bs.append([ev(5, user=u)])
            delta = await bs.read_since(u, 5, 8)
            assert delta.block.item_id.tolist() == [1005] and delta.anchor == full.newest
    finally:
        await h.aclose()


# ---- extend + recent_window: a delta rebuilds exactly what a full read gives ---------------------
@pytest.mark.parametrize("n_new", [0, 1, 3, 7])
async def test_delta_extended_sequence_equals_a_full_read(redis_handle, keys, n_new):
    L, S = 8, 5
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(i) for i in range(6)])  # fewer than L: the window grows first, then slides
    first = await bs.read_since(1, -1, L)
    base = sequence(first.block, first.newest, None, L, S, now=7.0)
    await bs.append([ev(i) for i in range(6, 6 + n_new)])
    since = await bs.read_since(1, base.total, L)
    assert not since.full and since.anchor == base.newest
    got = sequence(since.block, since.newest, base, L, S, now=99.0)
    full = await bs.read_since(1, -1, L)
    assert_same(got, sequence(full.block, full.newest, None, L, S))
    assert got.born == 7.0  # a delta keeps its entry's birth: max age bounds the entry, not the last use


def test_recent_window_reuses_the_base_rows_and_rereads_new_and_missing_ones():
    ids = np.array([9, 8, 7, 6], np.int64)
    z = np.zeros
    base = UserSequence(ids, ids, z((4, J), np.float32), proj_of(ids), rows_of(ids[:3]),
                        np.array([True, False, True]), 4, b"x", 0.0)
    rows, found, need = recent_window(base, np.array([11], np.int64), 3, 10, F)
    assert rows[:, 0].tolist() == [11, 9, 8] and need.tolist() == [0, 2]  # the new one, base's miss (8)
    np.testing.assert_array_equal(rows[1], rows_of(np.array([9]))[0])
    assert found.tolist() == [False, True, False]


# ---- the cache: bytes (LRU), age, replacement ---------------------------------------------------
def entry(uid: int, m: int, born: float = 0.0) -> UserSequence:
    ids = np.arange(m, dtype=np.int64) + uid * 1000
    z = np.zeros
    return UserSequence(ids, ids, z((m, J), np.float32), proj_of(ids), rows_of(ids[:2]), z(min(2, m), bool),
                        m, b"r" * 24, born)


def test_entry_bytes_count_every_array_and_the_device_tensor():
    e = entry(1, 100)
    arrays = 100 * 8 * 2 + 100 * J * 4 + 2 * F * 8 + 2  # ids, ts, cross, recent, recent_found
    assert e.nbytes == arrays + 100 * D * 2 + 24 + ENTRY_OVERHEAD_BYTES


def test_eviction_by_bytes_drops_the_least_recently_used():
    size = entry(0, 100).nbytes
    cache = UserSequenceCache(max_bytes=3 * size, max_age_s=30, clock=lambda: 0.0)
    for uid in (1, 2, 3):
        cache.put(uid, entry(uid, 100))
    assert cache.lookup(1) is not None  # 1 is now the most recently used: 2 goes first
    cache.put(4, entry(4, 100))
    assert cache.lookup(2) is None and all(cache.lookup(u) is not None for u in (1, 3, 4))
    st = cache.stats()
    assert st["evictions"] == 1 and st["entries"] == 3 and st["bytes"] == 3 * size <= st["max_bytes"]
    cache.put(3, entry(3, 10))  # a replacement is accounted, not added
    assert cache.stats()["bytes"] == 2 * size + entry(3, 10).nbytes


def test_an_entry_larger_than_the_budget_is_not_stored():
    cache = UserSequenceCache(max_bytes=entry(0, 10).nbytes, max_age_s=30, clock=lambda: 0.0)
    cache.put(1, entry(1, 10))
    cache.put(2, entry(2, 1000))
    assert cache.lookup(2) is None and cache.lookup(1) is not None
    assert cache.stats()["too_large"] == 1 and cache.stats()["evictions"] == 0


def test_entries_older_than_max_age_are_read_again():
    now = [100.0]
    cache = UserSequenceCache(max_bytes=10**7, max_age_s=30, clock=lambda: now[0])
    cache.put(1, entry(1, 10, born=now[0]))
    now[0] = 130.0
    assert cache.lookup(1) is not None  # exactly max age: still served
    now[0] = 130.5
    assert cache.lookup(1) is None and cache.lookup(1) is None
    st = cache.stats()
    assert st["expired"] == 1 and st["misses"] == 1 and st["entries"] == 0 and st["bytes"] == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_bytes"):
        UserSequenceCache(0, 30)
    with pytest.raises(ValueError, match="max_age_s"):
        UserSequenceCache(10, 0)
