"""Times the two CPU CP-GSU paths of service.engine.gsu_route on this machine, at warm-up.

What is measured, and why, is in gsu_route's docstring.
"""
from __future__ import annotations

import math
import statistics
import threading
import time

import torch

from service.engine.forward import alpha_scratch, collate, synthetic_inputs
from service.engine.gsu_route import MAX_ALPHA_BYTES, RouteTiming, alpha_bytes
from service.engine.slot import ModelSlot

ROUNDS = 5  # timed calls of each path, interleaved (after one untimed call each)


def route_shapes(slot: ModelSlot) -> list[tuple[int, int]]:
    """(L, C) to measure: L from 1,000 (below, both take well under a millisecond) to the slot's
    largest bucket, a factor ~3 apart, at C = 100 (a ranking request's typical size, clipped to the
    candidate buckets). One C only: the probe delays readiness (a restarted scorer must answer within
    5 s, `make faults`), and the largest C bucket cost ~4x the rest of the probe (CI, 2026-12-02: 1.9 s
    in all on a slow spell, against ~0.3 s now). Wherever the two paths were more than a few percent
    apart at C = 100, the larger C had the same winner (W1 and W3 on both hosts measured, CI's stack at
    L = 1,000-2,000, C = 1,000), and the lookup's memory bound still keeps a large batch fused."""
    lmax, cmin, cmax = slot.seq_buckets[-1], slot.cand_buckets[0], slot.cand_buckets[-1]
    ls, L = [], min(1_000, lmax)
    while L < lmax / 1.5:  # none within 1.5x of lmax: it is measured itself
        ls.append(L)
        L = int(L * math.sqrt(10))
    ls.append(lmax)
    C = min(max(100, cmin), cmax)
    return [(L, C) for L in ls]


def measure_route(slot: ModelSlot, L: int, C: int, seed: int = 0) -> RouteTiming:
    """select() both ways on synthetic inputs of one shape, on the calling (inference) thread,
    interleaved round by round so that a noisy neighbour slows both alike -> the medians (ms)."""
    batch = collate(slot, [synthetic_inputs(slot, L, C, seed=seed)])
    model = slot.model
    with torch.inference_mode():
        if not model.selects_without_alpha(batch):  # no choice here (CUDA, the recent-k baseline)
            return RouteTiming(L, C, math.nan, None)
        runs = {"fused": lambda: model.select(batch, None, fused=True)}
        if alpha_bytes(L, C, model.cfg.n_heads) <= MAX_ALPHA_BYTES:
            runs["materialised"] = lambda: model.select(batch, alpha_scratch(slot, batch), fused=False)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for f in runs.values():
            f()
        for _ in range(ROUNDS):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    slot.alpha_scratch.pop(threading.get_ident(), None)  # up to MAX_ALPHA_BYTES: only a batch that needs it keeps one
    med = {k: statistics.median(v) for k, v in times.items()}
    return RouteTiming(L, C, med["fused"], med.get("materialised"))


def describe(timings: list[RouteTiming]) -> str:
    """One log line: every measured shape, both times and the route taken."""
    if timings and all(math.isnan(t.fused_ms) for t in timings):
        return "no choice on this device (alpha is materialised)"
    return "; ".join(f"L={t.L} C={t.C}: fused {t.fused_ms:.2f} ms"
                     + (f" vs materialised {t.materialised_ms:.2f} ms" if t.materialised_ms is not None else "")
                     + (" -> fused" if t.fused else " -> materialised") for t in timings)
