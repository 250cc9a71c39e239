"""Load-test worlds (service.seeding.WORLDS): users get exactly L behaviors from the demo data set's
generator (drawn into a behaviors file by `python -m training.cli world`), newest first, in an id
range clear of the demo users; and the service reads L above the model's training length when
TWIN_MAX_SEQ_LEN asks for it."""
from __future__ import annotations

import asyncio

import numpy as np
import pyarrow.parquet as pq
import pytest

from cache.behavior_store import BehaviorStore, Event
from loadtest.profiles import PROFILES
from service.seeding import WORLDS, World, get_world, load_histories, seed_world, write_world_file
from tests.service_world import HISTORY, NOW_MS, history, running, world  # noqa: F401
from training import synthetic

CROSS = ("play_ratio", "liked")
TINY = synthetic.preset("tiny", n_users=20, users_per_chunk=20)  # 2,000 items, demo users 1..20
SMALL = World("T", seq_len=500, n_users=7, first_user_id=5_000_001)


@pytest.fixture(scope="module")
def world_file(tmp_path_factory):
    """SMALL drawn by the training CLI in a child process, as the bootstrap does."""
    data = tmp_path_factory.mktemp("tiny")
    synthetic.generate(TINY, data, progress=False)
    return write_world_file(data, SMALL)


async def test_world_users_get_exactly_L_behaviors_newest_first(redis_handle, keys, world_file):
    client = redis_handle.client
    demo_ids = [1, 2, 3]
    demo = [history(u, 40 + u) for u in demo_ids]
    await load_histories(client, keys, 2, demo_ids, demo)
    n = await seed_world(client, keys, world_file, SMALL, CROSS, cap=1_000)
    assert n == SMALL.n_users * SMALL.seq_len
    store = BehaviorStore(client, keys, 2, cap=1_000)
    ids = list(range(SMALL.first_user_id, SMALL.last_user_id + 1))
    blocks = await store.read_newest(ids, 10_000)
    for b in blocks:
        assert len(b) == b.total == SMALL.seq_len
        assert np.all(np.diff(b.ts) <= 0), "newest first"
        assert b.item_id.min() >= 1 and b.item_id.max() <= TINY.n_items  # the demo catalog's ids
        assert np.all((b.cross[:, 0] > 0) & (b.cross[:, 0] < 1)) and set(np.unique(b.cross[:, 1])) <= {0.0, 1.0}
    # the newest n of a log are the head of the full read
    head = (await store.read_newest(ids[:2], 50))
    for h, full in zip(head, blocks):
        np.testing.assert_array_equal(h.item_id, full.item_id[:50])
        np.testing.assert_array_equal(h.ts, full.ts[:50])
    # users differ (their own interests), and items are skewed as the catalog's popularity is
    assert len({tuple(b.item_id[:20]) for b in blocks}) == SMALL.n_users
    counts = np.bincount(np.concatenate([b.item_id for b in blocks]))
    assert np.sort(counts)[-20:].sum() > 0.1 * n  # 1% of the items take > 10% of the behaviors
    # the demo users were left alone; the neighbours of the range hold nothing
    for got, want in zip(await store.read_newest(demo_ids, 10_000), demo):
        np.testing.assert_array_equal(got.item_id, want.item_id)
        assert got.total == want.total
    outside = await store.read_newest([SMALL.first_user_id - 1, SMALL.last_user_id + 1], 10)
    assert [b.total for b in outside] == [0, 0]


async def test_reseeding_restores_exactly_L_deterministically(redis_handle, keys, world_file):
    client = redis_handle.client
    store = BehaviorStore(client, keys, 2, cap=1_000)
    uid = SMALL.first_user_id
    await seed_world(client, keys, world_file, SMALL, CROSS, cap=1_000)
    before = (await store.read_newest([uid], 10_000))[0]
    await store.append([Event("lt-1", uid, 7, NOW_MS, np.array([0.5, 1.0], np.float32))])  # a load test's event
    assert (await store.read_newest([uid], 10_000))[0].total == SMALL.seq_len + 1
    await seed_world(client, keys, world_file, SMALL, CROSS, cap=1_000)
    after = (await store.read_newest([uid], 10_000))[0]
    assert after.total == len(after) == SMALL.seq_len
    np.testing.assert_array_equal(after.item_id, before.item_id)
    np.testing.assert_array_equal(after.cross, before.cross)


def test_a_file_of_another_world_or_without_the_models_cross_features_is_refused(world_file):
    with pytest.raises(ValueError, match="cap"):
        asyncio.run(seed_world(None, None, world_file, SMALL, CROSS, cap=499))
    with pytest.raises(ValueError, match="watch_time"):
        asyncio.run(seed_world(None, None, world_file, SMALL, ("play_ratio", "watch_time")))
    for other in (World("T", 400, 7, SMALL.first_user_id), World("T", 500, 8, SMALL.first_user_id),
                  World("T", 500, 7, SMALL.first_user_id + 1)):
        with pytest.raises(ValueError, match="does not hold world"):
            asyncio.run(seed_world(None, None, world_file, other, CROSS, cap=1_000))
    with pytest.raises(ValueError, match="W9"):
        get_world("W9")
    assert get_world(" w2 ") is WORLDS["W2"]


def test_the_world_file_is_drawn_once_per_data_set(world_file):
    before = world_file.stat().st_mtime_ns
    assert write_world_file(world_file.parent, SMALL) == world_file
    assert world_file.stat().st_mtime_ns == before  # not drawn again
    assert pq.read_metadata(world_file).num_rows == SMALL.n_users * SMALL.seq_len


def test_worlds_match_the_profiles_and_never_overlap_demo_users():
    assert set(WORLDS) == set(PROFILES)
    for name, w in WORLDS.items():
        assert w.seq_len == PROFILES[name].seq_len
        # far above any demo preset's users (bench preset: 10,000 users)
        assert w.first_user_id > max(p.n_users for p in synthetic.PRESETS.values())
    ranges = sorted((w.first_user_id, w.last_user_id) for w in WORLDS.values())
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


async def test_service_reads_L_above_the_model_training_length(world):  # noqa: F811
    """The tiny model is trained at max_len 300; user 4 holds 1,000 behaviors."""
    assert world.models[world.registry.active()].cfg.max_len == 300 and HISTORY[4] == 1_000
    body = {"user_id": 4, "candidates": [{"item_id": c} for c in range(0, 600, 10)], "explain": True,
            "context": {"ts": NOW_MS}}
    deepest = {}
    for seq_len in (None, 800, 5_000):
        settings = world.settings.model_copy(update={"max_seq_len": seq_len, "behavior_cap": 2_000})
        async with running(settings) as (app, client):
            slot = app.state.ctx.engine.active
            r = await client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        deepest[seq_len] = max(s["position"] for c in r.json()["explain"] for s in c["selected"])
        deepest[(seq_len, "L")] = slot.seq_len
    assert deepest[(None, "L")] == 300 and deepest[None] < 300  # default: the training length
    assert deepest[(800, "L")] == 800 and 300 <= deepest[800] < 800  # behaviors past 300 are selected
    assert deepest[(5_000, "L")] == 2_000 and 300 <= deepest[5_000] < 1_000  # clipped to the log cap
