"""BehaviorStore against a real Redis: order, cap, idempotency, concurrency, one round trip."""
import asyncio

import numpy as np
import pytest

from cache.behavior_store import BehaviorBlock, BehaviorStore, Event
from cache.connection import open_redis

J = 2


def ev(i: int, user: int = 1, ts: int | None = None) -> Event:
    return Event(f"e-{user}-{i}", user, 1000 + i, ts if ts is not None else 10_000 + i,
                 np.array([i / 10, i % 2], np.float32))


async def test_append_then_read_newest_first_with_exact_values(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    assert await bs.append([ev(i) for i in range(5)]) == 5
    [blk] = await bs.read_newest([1], 3)
    assert blk.item_id.tolist() == [1004, 1003, 1002]
    assert blk.ts.tolist() == [10_004, 10_003, 10_002]
    np.testing.assert_array_equal(blk.cross, np.array([[0.4, 0], [0.3, 1], [0.2, 0]], np.float32))
    assert blk.total == 5 and blk.item_id.dtype == np.int64 and blk.cross.dtype == np.float32


async def test_events_of_one_batch_are_stored_in_ts_order(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(0, ts=30), ev(1, ts=10), ev(2, ts=20)])
    [blk] = await bs.read_newest([1], 10)
    assert blk.ts.tolist() == [30, 20, 10]


async def test_unknown_user_reads_empty(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    [blk] = await bs.read_newest([424242], 100)
    assert len(blk) == 0 and blk.total == 0 and blk.cross.shape == (0, J)
    [blk] = await bs.read_newest([424242], 0)
    assert len(blk) == 0


async def test_redelivery_is_idempotent_by_event_id(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    batch = [ev(i) for i in range(10)]
    assert await bs.append(batch) == 10
    assert await bs.append(batch) == 0  # the client retried an acknowledged batch
    assert await bs.append(batch[5:] + [ev(10), ev(10)]) == 1  # duplicate inside one batch too
    [blk] = await bs.read_newest([1], 100)
    assert blk.total == 11 and blk.item_id.tolist() == list(range(1010, 999, -1))


async def test_cap_keeps_the_newest_and_bounds_storage(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J, cap=100)
    for lo in range(0, 1000, 50):
        await bs.append([ev(i) for i in range(lo, lo + 50)])
        stored = await redis_handle.client.strlen(keys.user_log(1))
        assert stored <= (100 + 13) * bs.rec  # trimmed back to the cap past 1/8 of slack
    [blk] = await bs.read_newest([1], 10_000)
    assert len(blk) == 100 and blk.total == 1000
    assert blk.item_id.tolist() == list(range(1999, 1899, -1))


async def test_dedup_window_is_bounded_and_documented_as_such(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J, dedup_window=10, dedup_ttl_s=60)
    await bs.append([ev(i) for i in range(30)])
    assert await redis_handle.client.zcard(keys.user_event_ids(1)) == 10
    assert 0 < await redis_handle.client.ttl(keys.user_event_ids(1)) <= 60
    assert await bs.append([ev(29)]) == 0  # inside the window: dropped
    assert await bs.append([ev(0)]) == 1  # older than the window: stored again (at-least-once)


async def test_concurrent_appends_from_several_clients_lose_nothing(redis_url, keys):
    handles = [await open_redis(redis_url) for _ in range(4)]
    try:
        stores = [BehaviorStore(h.client, keys, n_cross=J) for h in handles]

        async def writer(w: int):
            for b in range(10):  # 10 batches x 3 users x 5 events, plus a re-send of each batch
                batch = [ev(w * 1000 + b * 10 + j, user=u) for u in (1, 2, 3) for j in range(5)]
                await stores[w].append(batch)
                await stores[(w + 1) % 4].append(batch[::2])

        await asyncio.gather(*(writer(w) for w in range(4)))
        blocks = await stores[0].read_newest([1, 2, 3], 10_000)
        for blk in blocks:
            assert blk.total == len(blk) == 4 * 10 * 5
            want = {1000 + w * 1000 + b * 10 + j for w in range(4) for b in range(10) for j in range(5)}
            assert set(blk.item_id.tolist()) == want
    finally:
        for h in handles:
            await h.aclose()


async def test_read_newest_for_many_users_is_one_round_trip(redis_handle, keys, counting_client):
    counting = counting_client(redis_handle.client)
    bs = BehaviorStore(counting, keys, n_cross=J)
    await bs.append([ev(i, user=u) for u in range(20) for i in range(3)])
    counting.trips = 0
    blocks = await bs.read_newest(list(range(20)), 2)
    assert counting.trips == 1
    assert [b.total for b in blocks] == [3] * 20


async def test_append_survives_a_flushed_script_cache(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    await bs.append([ev(0)])
    await redis_handle.client.script_flush()
    assert await bs.append([ev(1), ev(2)]) == 2
    assert (await bs.read_newest([1], 5))[0].total == 3


async def test_write_history_round_trips_and_keeps_total(redis_handle, keys):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J, cap=50)
    m = 80
    blk = BehaviorBlock(item_id=np.arange(m, 0, -1), ts=np.arange(m, 0, -1) * 10,
                        cross=np.random.default_rng(0).random((m, J), dtype=np.float32), total=500)
    await bs.write_history([7], [blk])
    [got] = await bs.read_newest([7], 1000)
    assert got.total == 500 and len(got) == 50
    np.testing.assert_array_equal(got.item_id, blk.item_id[:50])
    np.testing.assert_array_equal(got.cross, blk.cross[:50])
    assert await bs.append([ev(1, user=7)]) == 1
    assert (await bs.read_newest([7], 1))[0].item_id.tolist() == [1001]


@pytest.mark.parametrize("bad, match", [
    (Event("", 1, 1, 1, np.zeros(J, np.float32)), "event_id"),
    (Event("x", -1, 1, 1, np.zeros(J, np.float32)), "user_id"),
    (Event("x", 1, 2**63, 1, np.zeros(J, np.float32)), "item_id"),
    (Event("x", 1, 1, 1, np.zeros(J + 1, np.float32)), "cross must have shape"),
    (Event("x", 1, 1, 1, np.array([np.nan, 0], np.float32)), "finite"),
])
async def test_bad_events_are_refused_before_anything_is_written(redis_handle, keys, bad, match):
    bs = BehaviorStore(redis_handle.client, keys, n_cross=J)
    with pytest.raises(ValueError, match=match):
        await bs.append([ev(0), bad])
    assert (await bs.read_newest([1], 5))[0].total == 0
