"""What a load test's latencies are read against, measured in the same run just before the load:
the active model's bare forward on a request of the world's shape, and the hardware floor of it.

An absolute budget on a shared 2-core box has to be set ~20x above the real figure to pass on a busy
day, so no regression trips it. Ratios measured minutes apart on the same box move much less, so the
smoke gates on two of them (loadtest.report.gate):
  * HTTP p99 / bare forward p99: what HTTP, Redis, batching and queueing add to the model
    (a regression in the serving path);
  * bare forward / floor, floor = alpha's GEMM + one read pass over alpha at the same shape (a
    regression in the model's forward, which the first ratio cannot see: it slows both sides); the
    median over rounds of each round's p50 ratio, so a burst of load in one round moves it little.
The forward runs as the engine runs it (service.engine.forward.run_batch, the service's default CPU
threads and malloc settings), on random inputs of the shape the world's requests have.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Baseline:
    seq_len: int
    candidates: int
    forward_p50_ms: float
    forward_p99_ms: float
    floor_p50_ms: float
    calls: int
    forward_over_floor: float  # median over rounds of (forward p50 / floor p50 within the round)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model_root: Path, candidates: int, seq_len: int | None = None, rounds: int = 6,
            per_round: int = 5) -> Baseline:
    """The active model of the registry at model_root, L = seq_len (default: the model's max_len),
    C = candidates; forward and floor interleaved round by round."""
    import torch

    from model_store.registry import ModelRegistry
    from service.engine.forward import run_batch, synthetic_inputs
    from service.engine.gsu_route import GsuRoutes
    from service.engine.gsu_route_probe import measure_route
    from service.engine.slot import ModelSlot
    from service.engine.worker import default_parallel_threads, default_threads
    from service.malloc_tuning import keep_freed_memory
    from service.settings import Settings
    from twin.kernels import cpu_threads

    reg = ModelRegistry(model_root)
    version = reg.active()
    if version is None:
        raise ValueError(f"no active model in {model_root}")
    model, manifest = reg.load(version)
    L = seq_len or model.cfg.max_len
    cpu = torch.device("cpu")
    keep_freed_memory(Settings.model_fields["malloc_keep_mb"].default)
    torch.set_num_threads(default_threads(cpu))
    cpu_threads.set_cpu_threads(default_parallel_threads(cpu))
    # the stores are unused: run_batch reads the model, the device and the bucket fields only
    slot = ModelSlot(version=version, model=model, manifest=manifest, device=cpu, autocast=None, seq_len=L,
                     seq_buckets=[64, L], cand_buckets=[8, candidates], behaviors=None, catalog=None,  # type: ignore[arg-type]
                     local_cache=None)  # type: ignore[arg-type]
    slot.gsu_routes = GsuRoutes(model.cfg.n_heads, [measure_route(slot, L, min(100, candidates))])  # as the service's warm-up
    inputs = [synthetic_inputs(slot, L, candidates, seed=s) for s in range(2)]
    A, dk = model.cfg.n_heads, model.cfg.d_k
    g = torch.Generator().manual_seed(0)
    kt = torch.randn(A, dk, L, generator=g)  # [A, d_k, L]
    q = torch.randn(A, candidates, dk, generator=g)
    alpha = torch.empty(A, candidates, L)

    def floor() -> None:  # GEMM + one read pass, split by heads like the forward's
        def heads(lo: int, hi: int) -> None:
            torch.bmm(q[lo:hi], kt[lo:hi], out=alpha[lo:hi]).amax(-1)
        cpu_threads.split(A, 1, heads)

    fwd: list[float] = []
    flo: list[float] = []
    per_round_ratio: list[float] = []
    for f in (floor, lambda: run_batch(slot, [inputs[0]])):  # warm: compile, fault in
        f()
        f()
    for r in range(rounds):
        for i in range(per_round):
            t0 = time.perf_counter()
            run_batch(slot, [inputs[(r + i) % 2]])
            fwd.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            floor()
            flo.append((time.perf_counter() - t0) * 1e3)
        per_round_ratio.append(float(np.median(fwd[-per_round:]) / np.median(flo[-per_round:])))
    p = lambda xs, q_: float(np.percentile(np.asarray(xs), q_))  # noqa: E731
    return Baseline(seq_len=L, candidates=candidates, forward_p50_ms=p(fwd, 50), forward_p99_ms=p(fwd, 99),
                    floor_p50_ms=p(flo, 50), calls=len(fwd), forward_over_floor=float(np.median(per_round_ratio)))


def ratios(b: Baseline, http_p99_ms: float | None) -> dict[str, float]:
    out = {"forward_over_floor": b.forward_over_floor}
    if http_p99_ms is not None and b.forward_p99_ms > 0 and math.isfinite(http_p99_ms):
        out["http_p99_over_forward_p99"] = http_p99_ms / b.forward_p99_ms
    return out
