"""Shared fixtures of the service tests: a tiny model in a tmp registry, a catalog and user
histories in the real test Redis (conftest's isolated prefix), and a running app + client.

`reference_scores` recomputes a response directly with `model.score` from what Redis holds, the
oracle the service's answers are held against.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import torch

from cache.behavior_store import BehaviorBlock, BehaviorStore
from cache.catalog_store import CatalogStore
from cache.projection_store import ProjectionStore
from model_store.registry import ModelRegistry
from service.app import create_app
from service.seeding import load_catalog, load_histories
from service.settings import Settings
from tests.twin_factory import N_AUTHORS, N_CATEGORIES, NOW_MS, tiny_model
from twin.model import ServeBatch, TwinCTR

N_ITEMS = 600  # catalog size; ids >= N_ITEMS are unknown items
HISTORY = {1: 300, 2: 57, 3: 4, 4: 1000}  # user -> behaviors (user 4 exceeds max_len = 300)
ADMIN = "s3cret-token"


def item_rows(ids: np.ndarray) -> np.ndarray:
    """Deterministic raw inherent features [N, 5]: item_id, author_id, category, duration_s, views."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids, ids % N_AUTHORS, ids % N_CATEGORIES, (ids * 7) % 1800 + 1, (ids * 31) % 5000], axis=1)


def history(uid: int, n: int) -> BehaviorBlock:
    g = np.random.default_rng(uid)
    ts = NOW_MS - np.sort(g.integers(60_000, 10**10, n))  # newest first
    cross = np.stack([g.random(n, dtype=np.float32), (g.random(n) > 0.6).astype(np.float32)], axis=1)
    return BehaviorBlock(item_id=g.integers(0, N_ITEMS, n).astype(np.int64), ts=ts.astype(np.int64),
                         cross=cross, total=n)


@dataclass
class World:
    settings: Settings
    registry: ModelRegistry
    handle: object
    keys: object
    models: dict[str, TwinCTR] = field(default_factory=dict)

    def publish(self, seed: int, activate: bool = False) -> str:
        model = tiny_model(seed=seed)
        v = self.registry.publish(model, metrics={"seed": seed}, data_fingerprint="service-tests")
        self.models[v] = model
        if activate:
            self.registry.activate(v)
        return v


def make_settings(redis_url: str, keys, root, **kw) -> Settings:
    base = dict(redis_url=redis_url, redis_prefix=keys.prefix, redis_buckets=keys.n_buckets, model_root=root,
                admin_token=ADMIN, device="cpu", embedded_redis_dir=None, max_candidates=64, max_events=50,
                max_body_bytes=64 * 1024, redis_ping_interval_s=0.2, model_poll_interval_s=3600,
                batch_max_wait_ms=2.0, warmup="edges",
                redis_timeout_ms=1000.0)  # generous: the test machine is shared and busy
    base.update(kw)
    return Settings(**base)


async def build_world(redis_url: str, handle, keys, root) -> World:
    """A tiny active model in a registry at `root`; catalog and histories in Redis (no projections:
    the service's startup runs the projector, as a fresh deployment would)."""
    w = World(make_settings(redis_url, keys, root), ModelRegistry(root), handle, keys)
    w.publish(seed=0, activate=True)
    ids = np.arange(N_ITEMS, dtype=np.int64)
    await load_catalog(handle.client, keys, ids, item_rows(ids))
    await load_histories(handle.client, keys, 2, list(HISTORY), [history(u, n) for u, n in HISTORY.items()])
    return w


@pytest.fixture
async def world(redis_url, redis_handle, keys, tmp_path) -> World:
    return await build_world(redis_url, redis_handle, keys, tmp_path / "models")


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The app with its lifespan, and an httpx client on it (no sockets)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield app, client


async def reference_scores(world: World, version: str, user_id: int, cand_ids: list[int], now: int,
                           explain: bool = False):
    """model.score on exactly what the service reads: newest L behaviors, float16 projections."""
    model = world.models[version]
    cfg = model.cfg
    client, keys = world.handle.client, world.keys
    block = (await BehaviorStore(client, keys, 2).read_newest([user_id], cfg.max_len))[0]
    m = len(block)
    proj, found = await ProjectionStore(client, keys, version, model.proj_dim).get(block.item_id)
    assert found.all()
    S = min(cfg.short_len, m)
    recent, _ = await CatalogStore(client, keys, len(cfg.schema.inherent)).get(block.item_id[:S])
    batch = ServeBatch(
        seq_proj=torch.from_numpy(proj.astype(np.float32))[None], seq_cross=torch.from_numpy(block.cross)[None],
        seq_ts=torch.from_numpy(block.ts)[None], seq_mask=torch.ones(1, m, dtype=torch.bool),
        recent_items=torch.from_numpy(recent)[None], cand=torch.from_numpy(item_rows(np.array(cand_ids)))[None],
        cand_mask=torch.ones(1, len(cand_ids), dtype=torch.bool), now=torch.tensor([now]),
        hist_len=torch.tensor([block.total]))
    with torch.inference_mode():
        out = model.score(batch, explain=explain)
    return out, block
