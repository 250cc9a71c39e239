"""The projector job against a real Redis: exact bytes, sharded == resumed == single run,
incremental updates, the completion marker, garbage collection and the CLI."""
import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cache.catalog_store import CatalogStore
from cache.projection_store import ProjectionStore, delete_version
from cache.projector import project_version
from tests.twin_factory import raw_items, tiny_model

N = 3000


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
async def catalog(redis_handle, keys):
    g = torch.Generator().manual_seed(0)
    raw = raw_items(g, N).numpy()
    ids = np.random.default_rng(0).choice(10**12, N, replace=False).astype(np.int64)
    cat = CatalogStore(redis_handle.client, keys, n_features=raw.shape[1])
    await cat.put(ids, raw)
    return cat, ids, raw


def expected(model, raw: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.project_items(torch.from_numpy(raw)).to(torch.float16).numpy()


async def stored(store: ProjectionStore, ids: np.ndarray) -> bytes:
    vecs, found = await store.get(ids)
    assert found.all()
    return vecs.tobytes()


class CrashingModel:
    """Delegates to a model but raises on the (k+1)-th batch: a job killed midway."""

    def __init__(self, model, k: int):
        self.model, self.k, self.proj_dim = model, k, model.proj_dim

    def project_items(self, x):
        if self.k == 0:
            raise RuntimeError("simulated crash")
        self.k -= 1
        return self.model.project_items(x)


async def test_full_run_stores_exact_projections_and_a_matching_marker(redis_handle, keys, model, catalog):
    cat, ids, raw = catalog
    ps = ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim)
    res = await project_version(model, "v1", None, cat, ps, batch_size=700, progress=False)
    assert res["items_written"] == N and res["complete"]
    assert await stored(ps, ids) == expected(model, raw).tobytes()
    marker = await ps.read_marker()
    count, checksum = await ps.stored_checksum()
    assert marker["count"] == count == N and marker["checksum"] == f"{checksum:016x}"
    assert marker["dim"] == model.proj_dim and marker["version"] == "v1"


async def test_sharded_and_resumed_runs_equal_a_single_run(redis_handle, keys, model, catalog):
    cat, ids, _ = catalog
    c = redis_handle.client
    single = ProjectionStore(c, keys, "single", model.proj_dim)
    await project_version(model, "single", ids, cat, single, batch_size=500, progress=False)

    sharded = ProjectionStore(c, keys, "sharded", model.proj_dim)
    runs = [project_version(model, "sharded", ids, cat, sharded, shard=(i, 3), batch_size=300, progress=False)
            for i in range(3)]
    results = await asyncio.gather(*runs)
    assert sum(r["items_written"] for r in results) == N and any(r["complete"] for r in results)

    resumed = ProjectionStore(c, keys, "resumed", model.proj_dim)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await project_version(CrashingModel(model, 3), "resumed", ids, cat, resumed, batch_size=400, progress=False)
    assert await resumed.read_marker() is None  # a half-done version is never servable
    again = await project_version(model, "resumed", ids, cat, resumed, batch_size=400, progress=False)
    assert again["buckets_skipped"] > 0 and again["items_written"] < N and again["complete"]

    want = await stored(single, ids)
    markers = [await s.read_marker() for s in (single, sharded, resumed)]
    for s, m in zip((sharded, resumed), markers[1:]):
        assert await stored(s, ids) == want
        assert (m["count"], m["checksum"]) == (markers[0]["count"], markers[0]["checksum"])


async def test_rerun_of_a_complete_version_does_nothing(redis_handle, keys, model, catalog):
    cat, ids, _ = catalog
    ps = ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim)
    await project_version(model, "v1", ids, cat, ps, progress=False)
    res = await project_version(model, "v1", ids, cat, ps, progress=False)
    assert res["items_written"] == 0 and res["buckets_skipped"] == keys.n_buckets and res["complete"]


async def test_incremental_run_updates_changed_new_and_removed_items(redis_handle, keys, model, catalog):
    cat, ids, raw = catalog
    ps = ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim)
    await project_version(model, "v1", ids, cat, ps, progress=False)
    before = (await ps.read_marker())["checksum"]

    changed = ids[:5]
    new_raw = raw[:5].copy()
    new_raw[:, 2] = (new_raw[:, 2] + 1) % 20  # another category
    await cat.put(changed, new_raw)
    new_id = np.array([10**12 + 7], np.int64)
    await cat.put(new_id, raw[:1])
    gone = ids[5:7]
    await redis_handle.client.hdel(keys.item_bucket(int(gone[0]) % keys.n_buckets), int(gone[0]))
    await redis_handle.client.hdel(keys.item_bucket(int(gone[1]) % keys.n_buckets), int(gone[1]))

    res = await project_version(model, "v1", np.concatenate([changed, new_id, gone]), cat, ps,
                                incremental=True, progress=False)
    assert res["items_written"] == 6 and res["items_missing"] == 2
    vecs, found = await ps.get(np.concatenate([changed, new_id, gone]))
    assert found.tolist() == [True] * 6 + [False] * 2
    # the new projections (to float16 rounding: a GEMM's rounding depends on its batch's rows, and the
    # job batches them its own way; the full run's exact bytes are pinned above)
    np.testing.assert_allclose(vecs[:5].astype(np.float32), expected(model, new_raw).astype(np.float32), rtol=2e-3,
                               atol=1e-3)
    assert not np.allclose(vecs[:5].astype(np.float32), expected(model, raw[:5]).astype(np.float32), atol=1e-2)
    marker = await ps.read_marker()
    count, checksum = await ps.stored_checksum()
    assert marker["count"] == count == N + 1 - 2
    assert marker["checksum"] == f"{checksum:016x}" != before


async def test_model_with_the_wrong_width_is_refused(redis_handle, keys, model, catalog):
    cat, ids, _ = catalog
    ps = ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim + 1)
    with pytest.raises(ValueError, match="proj_dim"):
        await project_version(model, "v1", ids, cat, ps, progress=False)
    with pytest.raises(ValueError, match="shard"):
        await project_version(model, "v1", ids, cat, ProjectionStore(redis_handle.client, keys, "v1", model.proj_dim),
                              shard=(3, 3))


async def test_delete_version_removes_every_key_of_that_version_only(redis_handle, keys, model, catalog):
    cat, ids, _ = catalog
    for v in ("old", "new"):
        await project_version(model, v, ids, cat, ProjectionStore(redis_handle.client, keys, v, model.proj_dim),
                              progress=False)
    await delete_version(redis_handle.client, keys, "old")
    left = {k async for k in redis_handle.client.scan_iter(match=f"{keys.prefix}:v:*", count=1000)}
    assert left and all(k.startswith(f"{keys.prefix}:v:new:".encode()) for k in left)
    assert (await ProjectionStore(redis_handle.client, keys, "new", model.proj_dim).read_marker())["count"] == N


async def test_cli_projects_a_registry_version(redis_url, redis_handle, keys, model, catalog, tmp_path):
    from model_store.registry import ModelRegistry

    cat, ids, raw = catalog
    reg = ModelRegistry(tmp_path / "registry")
    version = reg.publish(model, metrics={}, data_fingerprint="test")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "cache.projector", "--registry", str(tmp_path / "registry"), "--version", version,
           "--redis-url", redis_url, "--key-prefix", keys.prefix, "--n-buckets", str(keys.n_buckets),
           "--shard", "0/1", "--no-progress", "--device", "cpu"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ps = ProjectionStore(redis_handle.client, keys, version, model.proj_dim)
    assert (await ps.read_marker())["count"] == N
    assert await stored(ps, ids[:50]) == expected(model, raw[:50]).tobytes()
    bad = subprocess.run(cmd[:-4] + ["--shard", "2/2"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--shard" in bad.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
async def test_projector_on_cuda_matches_the_cpu_values(redis_handle, keys, model, catalog):
    cat, ids, raw = catalog
    gpu_model = tiny_model(seed=3).to("cuda")
    ps = ProjectionStore(redis_handle.client, keys, "gpu", model.proj_dim)
    res = await project_version(gpu_model, "gpu", ids, cat, ps, progress=False)
    assert res["complete"]
    vecs, found = await ps.get(ids)
    assert found.all()
    np.testing.assert_allclose(vecs.astype(np.float32), expected(model, raw).astype(np.float32), atol=2e-2, rtol=1e-2)
    count, checksum = await ps.stored_checksum()
    assert (await ps.read_marker())["checksum"] == f"{checksum:016x}"
