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
from service.engine.gsu_route import EVICTION_MS_PER_MB, MAX_ALPHA_BYTES, RouteTiming, alpha_bytes
from service.engine.slot import ModelSlot

ROUNDS = 5  # timed calls of each path, interleaved (after one untimed call each)


def route_shapes(slot: ModelSlot) -> list[tuple[int, int]]:
    """(L, C) to measure: L from 1,000 (below, both take well under a millisecond) to the slot's
    largest bucket, a factor ~3 apart, at C = 100 (a ranking request's typical size, clipped to the
    candidate buckets), and again at the largest candidate bucket where it is over twice that and
    one request's materialised alpha stays within MAX_ALPHA_BYTES (beyond, there is no choice).
    C matters: the materialised alpha grows with C and the fused pass shares each key's load over
    more candidates. At W3 (L = 10,000, C = 500) on a Zen 5 host the two paths were 1% apart at
    C = 100 (fused 3.82 vs materialised 3.78 ms: materialised taken) and 27% apart at C = 500 (10.0
    vs 13.7 ms, `make bench`, 2026-12-04). The probe delays readiness (a restarted scorer must answer
    within 5 s, `make faults`): with the large-C shapes, CI's restarted scorer (L up to 2,000, C up
    to 1,000) went from start to ready in 0.9-1.0 s (`make faults-smoke`, 2026-12-04)."""
    lmax, cmin, cmax = slot.seq_buckets[-1], slot.cand_buckets[0], slot.cand_buckets[-1]
    ls, L = [], min(1_000, lmax)
    while L < lmax / 1.5:  # none within 1.5x of lmax: it is measured itself
        ls.append(L)
        L = int(L * math.sqrt(10))
    ls.append(lmax)
    C = min(max(100, cmin), cmax)
    wide = [(L, cmax) for L in ls if cmax >= 2 * C and alpha_bytes(L, cmax, slot.cfg.n_heads) <= MAX_ALPHA_BYTES]
    return [(L, C) for L in ls] + wide


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
    eviction = EVICTION_MS_PER_MB * alpha_bytes(L, C, model.cfg.n_heads) / 2**20
    return RouteTiming(L, C, med["fused"], med.get("materialised"), eviction)


def describe(timings: list[RouteTiming]) -> str:
    """One log line: every measured shape, both times and the route taken."""
    if timings and all(math.isnan(t.fused_ms) for t in timings):
        return "no choice on this device (alpha is materialised)"
    return "; ".join(f"L={t.L} C={t.C}: fused {t.fused_ms:.2f} ms"
                     + (f" vs materialised {t.materialised_ms:.2f} + {t.eviction_ms:.2f} ms for what its alpha evicts"
                        if t.materialised_ms is not None else "")
                     + (" -> fused" if t.fused else " -> materialised") for t in timings)
