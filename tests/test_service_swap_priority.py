"""Preparing a version while another serves stays off the serving path: the projection runs in a niced
child process (the serving process computes none of it), and warm-up batches run only when no request
waits for the inference thread."""
from __future__ import annotations

import asyncio
import logging
import time

import torch

import cache.projector
from service.engine.batcher import MicroBatcher
from service.engine.worker import InferenceWorker
from service.metrics import Metrics
from tests.service_world import ADMIN, NOW_MS, World, running, world  # noqa: F401

AUTH = {"Authorization": f"Bearer {ADMIN}"}
REQ = {"user_id": 2, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}


async def test_a_version_activated_while_another_serves_is_projected_by_a_niced_child(world: World, monkeypatch,
                                                                                      caplog):
    v2 = world.publish(seed=5)
    async with running(world.settings) as (app, client):  # startup projected v1 in process
        def not_here(*a, **kw):
            raise AssertionError("the serving process projected the incoming version itself")

        monkeypatch.setattr(cache.projector, "project_version", not_here)
        with caplog.at_level(logging.INFO, logger="service.lifecycle"):
            act = await client.post(f"/v1/models/{v2}/activate", headers=AUTH)
        score = await client.post("/v1/score", json=REQ)
    assert act.status_code == 200, act.text
    assert score.status_code == 200 and score.json()["model_version"] == v2 and not score.json()["degraded"]
    assert any("background process" in r.getMessage() and "nice 19" in r.getMessage() for r in caplog.records)


class _Stub:
    """Inputs for the batcher that carry only what it reads."""

    def __init__(self, slot):
        self.slot, self.n_cand, self.explain = slot, 1, False


async def test_idle_work_never_runs_while_requests_wait(monkeypatch):
    worker = InferenceWorker(torch.device("cpu"), 1, 1)
    order: list[str] = []

    def fake_batch(slot, items, branches=None, n=1):
        time.sleep(0.02)
        order.extend("request" for _ in items)
        return [type("R", (), {"queue_ms": 0.0})() for _ in items]

    monkeypatch.setattr("service.engine.batcher.run_batch", fake_batch)
    b = MicroBatcher(worker, Metrics(), max_candidates=1, max_requests=1, max_wait_ms=0, queue_max=100)
    b.start()
    try:
        slot = object()
        deadline = time.monotonic() + 10
        futs = [b.submit(_Stub(slot), deadline) for _ in range(5)]  # five one-request batches queued
        job = asyncio.create_task(b.run_when_idle(lambda: order.append("idle") or 7))
        futs += [b.submit(_Stub(slot), deadline) for _ in range(3)]  # queued after the job: still first
        await asyncio.gather(*futs)
        assert await job == 7
    finally:
        await b.close()
        worker.close()
    assert order == ["request"] * 8 + ["idle"]


async def test_the_incoming_version_starts_with_the_served_users_sequences(world: World):
    v2 = world.publish(seed=6)
    async with running(world.settings) as (app, client):
        for user in (1, 2, 3):
            assert (await client.post("/v1/score", json={**REQ, "user_id": user})).status_code == 200
        old = app.state.ctx.engine.active
        act = await client.post(f"/v1/models/{v2}/activate", headers=AUTH)
        new = app.state.ctx.engine.active
        before = new.user_cache.stats()
        score = await client.post("/v1/score", json=REQ)
        after = new.user_cache.stats()
    assert act.status_code == 200 and new.version == v2 and old.version != v2
    assert before["entries"] == 3 and before["hits"] == 0  # prefilled before the switch (its own lookups missed)
    assert score.json()["model_version"] == v2 and not score.json()["degraded"]
    assert after["hits"] == 1 and after["misses"] == before["misses"]  # the first answer on v2 is no cold read
    assert new.catalog_cache is old.catalog_cache  # one schema: the rows stay warm
