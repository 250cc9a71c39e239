"""The engine's choice between the two exact CPU GSU paths (service.engine.gsu_route): the lookup by
nearest measured shape, the memory bound, that run_batch takes the route it is given (and the
materialised one answers what the fused one does), the timing probe, and that a served slot's
warm-up measured its routes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from service.engine import gsu_route_probe
from service.engine.forward import run_batch, synthetic_inputs
from service.engine.gsu_route import EVICTION_MS_PER_MB, GsuRoutes, RouteTiming
from service.engine.slot import ModelSlot
from tests.service_world import ADMIN, World, running, world  # noqa: F401
from tests.twin_factory import tiny_model


def _slot() -> ModelSlot:
    return ModelSlot(version="t", model=tiny_model(seed=5), manifest=None, device=torch.device("cpu"), autocast=None,  # type: ignore[arg-type]
                     seq_len=300, seq_buckets=[64, 300], cand_buckets=[8, 128], behaviors=None, catalog=None,  # type: ignore[arg-type]
                     local_cache=None)  # type: ignore[arg-type]


def test_the_route_is_that_of_the_nearest_measured_shape_and_fused_when_alpha_would_be_too_large():
    assert GsuRoutes(4).fused(10_000, 100) is None  # nothing measured: the model's default
    routes = GsuRoutes(4, [RouteTiming(1_000, 100, 1.0, 2.0), RouteTiming(10_000, 100, 9.0, 7.0),
                           RouteTiming(10_000, 500, 30.0, 20.0), RouteTiming(100_000, 100, 30.0, None)])
    assert routes.fused(900, 100) is True
    assert routes.fused(12_000, 90) is False
    assert routes.fused(9_000, 400) is False
    assert routes.fused(80_000, 100) is True  # materialised not timed there
    assert routes.fused(10_000, 5_000) is True  # nearest says materialised, but 800 MB of alpha
    # the materialised path is charged for the caches its alpha evicts: a faster select can still lose
    assert RouteTiming(10_000, 100, 2.72, 2.58, 1.0).fused and not RouteTiming(10_000, 100, 2.72, 1.6, 1.0).fused


def test_run_batch_takes_the_measured_route_and_both_routes_score_alike():
    slot = _slot()
    it = dataclasses.replace(synthetic_inputs(slot, 300, 40, seed=2), slot=slot, explain=True)
    slot.gsu_routes = GsuRoutes(slot.cfg.n_heads, [RouteTiming(300, 40, 1.0, 2.0)])
    fused = run_batch(slot, [it])[0]
    assert slot.alpha_scratch == {}  # the fused pass writes no alpha
    slot.gsu_routes = GsuRoutes(slot.cfg.n_heads, [RouteTiming(300, 40, 2.0, 1.0)])
    materialised = run_batch(slot, [it])[0]
    (buf,) = slot.alpha_scratch.values()  # alpha [1, A, 40, 300] was written into the thread's buffer
    assert buf.numel() >= slot.cfg.n_heads * 40 * 300
    # the two alphas differ by float32 rounding only (the GEMM sums in another order)
    np.testing.assert_allclose(materialised.scores, fused.scores, rtol=0, atol=1e-5)
    assert (materialised.positions == fused.positions).mean() > 0.99


def test_the_probe_times_both_paths_and_skips_the_materialised_one_past_the_memory_bound(monkeypatch):
    slot = _slot()
    t = gsu_route_probe.measure_route(slot, 300, 40)
    assert (t.L, t.C) == (300, 40) and t.fused_ms > 0 and t.materialised_ms is not None and t.materialised_ms > 0
    assert t.eviction_ms == pytest.approx(EVICTION_MS_PER_MB * 4 * slot.cfg.n_heads * 40 * 300 / 2**20)
    assert slot.alpha_scratch == {}  # the probe does not keep its buffer
    monkeypatch.setattr(gsu_route_probe, "MAX_ALPHA_BYTES", 4 * slot.cfg.n_heads * 40 * 300 - 1)
    t = gsu_route_probe.measure_route(slot, 300, 40)
    assert t.materialised_ms is None and t.fused
    assert gsu_route_probe.route_shapes(slot) == [(300, 100)]
    w1 = dataclasses.replace(slot, seq_buckets=[64, 10_000], cand_buckets=[8, 100])
    assert gsu_route_probe.route_shapes(w1) == [(1_000, 100), (3_162, 100), (10_000, 100)]
    big = dataclasses.replace(slot, seq_buckets=[64, 20_000], cand_buckets=[8, 512])
    ls = (1_000, 3_162, 9_999, 20_000)
    monkeypatch.setattr(gsu_route_probe, "MAX_ALPHA_BYTES", 4 * slot.cfg.n_heads * 512 * 20_000)
    assert gsu_route_probe.route_shapes(big) == [(L, 100) for L in ls] + [(L, 512) for L in ls]
    # the large-C shapes stop where one request's materialised alpha would pass the memory bound
    monkeypatch.setattr(gsu_route_probe, "MAX_ALPHA_BYTES", 4 * slot.cfg.n_heads * 512 * 9_999)
    assert gsu_route_probe.route_shapes(big) == [(L, 100) for L in ls] + [(L, 512) for L in ls[:3]]


async def test_a_served_slot_measured_its_routes_at_warm_up_and_a_swap_of_the_same_shapes_keeps_them(world: World):  # noqa: F811
    v2 = world.publish(seed=8)  # the same config, other weights
    async with running(world.settings) as (app, client):
        old = app.state.ctx.engine.active
        measured = {(t.L, t.C) for t in old.gsu_routes.timings}
        assert measured == set(gsu_route_probe.route_shapes(old))
        assert all(t.fused_ms > 0 for t in old.gsu_routes.timings)
        act = await client.post(f"/v1/models/{v2}/activate", headers={"Authorization": f"Bearer {ADMIN}"})
        new = app.state.ctx.engine.active
    assert act.status_code == 200 and new.version == v2 and new is not old
    assert new.gsu_routes is old.gsu_routes  # not probed again while the old version served
