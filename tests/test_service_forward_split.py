"""run_batch on the CPU: a lone request's ESU and tower split by candidates over the CPU threads answer
exactly what one unsplit forward answers (scores and explain), in candidate order."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from service.engine import forward
from service.engine.forward import run_batch, synthetic_inputs
from service.engine.slot import ModelSlot
from tests.twin_factory import tiny_model
from twin.kernels import cpu_threads


def _slot() -> ModelSlot:
    model = tiny_model(seed=3)
    return ModelSlot(version="t", model=model, manifest=None, device=torch.device("cpu"), autocast=None,  # type: ignore[arg-type]
                     seq_len=300, seq_buckets=[64, 300], cand_buckets=[8, 128], behaviors=None, catalog=None,  # type: ignore[arg-type]
                     local_cache=None)  # type: ignore[arg-type]


def test_a_lone_requests_candidate_slices_score_as_one_forward(monkeypatch):
    slot = _slot()
    it = dataclasses.replace(synthetic_inputs(slot, 300, 96, seed=1), slot=slot, explain=True)
    alone = run_batch(slot, [it])[0]
    seen = []
    real = type(slot.model).finish
    monkeypatch.setattr(type(slot.model), "finish", lambda self, b, g, explain=False: seen.append(b.cand.shape[1])
                        or real(self, b, g, explain))
    monkeypatch.setattr(forward, "MIN_CANDIDATES_PER_SLICE", 32)  # the mechanics, at a size a test can afford
    cpu_threads.set_cpu_threads(3)
    try:
        split = run_batch(slot, [it])[0]
    finally:
        cpu_threads.set_cpu_threads(1)
    assert seen == [32, 32, 32]  # three slices of the 96 candidates, one per thread
    np.testing.assert_allclose(split.scores, alone.scores, rtol=0, atol=1e-6)
    assert np.array_equal(split.positions, alone.positions)
    for a, b in [(split.weight, alone.weight), (split.alpha_proj, alone.alpha_proj), (split.alpha_bias, alone.alpha_bias)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
