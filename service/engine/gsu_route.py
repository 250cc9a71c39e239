"""Which of the two exact CPU CP-GSU paths a forward runs, chosen by timing both on this machine.

Both rank alpha over all L exactly (twin.model.TwinCTR.select): the fused pass computes alpha block by
block from the float16 keys and never writes it (twin.kernels.cpu_fused_gsu); the materialised one
writes alpha with the BLAS GEMM into the thread's scratch buffer and ranks it (twin.kernels.cpu_gsu).
Neither wins on every CPU, so the engine measures, as cuDNN's benchmark mode does. `make bench`,
parts gsu_fused vs gsu_materialised, 2 vCPUs:
  AMD EPYC (Zen 4, copy 25 GB/s), 2026-12-02 16:49 UTC: W1 3.3 vs 3.6 ms, W2 19.9 vs 36.4, W3 13.8 vs 17.3;
  Intel Xeon (105 MB L3, copy 5.6-10 GB/s), 2026-12-02 18:52-20:38 UTC: W1 8.9 vs 6.8 ms (8.8 vs 6.2),
  W2 32.8 vs 41.1 (52.0 vs 45.0), W3 32.9 vs 21.7 (37.3 vs 22.4).
There the GEMM (MKL: FMA, 512-bit) outruns numba's 256-bit multiply-adds while alpha fits the L3; at
L = 100,000 (160 MB of alpha) writing and re-reading alpha costs about what that saves, and the two
runs disagree: the probe follows the machine of the moment.

The probe times `select` alone, back to back, and that flatters the materialised path: writing
alpha (16 MB at W1) evicts the caches that the rest of the request then runs in (the ESU's rows, the
event loop's code and data). `make bench-ab AB_ARGS="--new-env TWIN_WARMUP=none"` (the same code,
fused everywhere against the probe's choice, materialised at W1) on a Zen 5 host, 2026-12-04: select
alone 10% faster materialised (2.58 vs 2.72 ms, a one-off loop), yet the request 9% slower (HTTP p50
10.40 vs 9.55 ms; ESU 2.31 vs 1.85 ms, fetch 0.82 vs 0.74, outside the handler 1.48 vs 1.29; a
one-off harness of the same design: 8.88 vs 8.05 ms). So the materialised time is charged EVICTION_MS_PER_MB for every MB of alpha it writes:
~1 ms per 16 MB, what that run lost. Where the materialised path wins by more (an Intel host with
MKL: 2.1-2.6 ms at W1), it is still taken.

A route is measured per (L, C) shape at warm-up (service.lifecycle, by gsu_route_probe) and looked
up for the nearest measured shape (in log L, log C). The materialised path is never timed, nor taken, where its alpha
would pass MAX_ALPHA_BYTES: the scratch buffer would cost more memory than the speed is worth. The
choice changes only speed: both paths select exactly by their alpha, and the two alphas differ by
float32 rounding (the GEMM sums in another order), as the CPU and CUDA ones do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_ALPHA_BYTES = 256 * 2**20  # per request; W2 (L = 100,000, C = 100, 4 heads) is 160 MB
EVICTION_MS_PER_MB = 0.06  # what writing alpha costs the rest of a request, per MB (see above)


def alpha_bytes(L: int, C: int, heads: int) -> int:
    """float32 alpha [heads, C, L] of one request."""
    return 4 * heads * C * L


@dataclass(frozen=True)
class RouteTiming:
    L: int
    C: int
    fused_ms: float
    materialised_ms: float | None  # None: not timed (alpha too large, or no choice on this device)
    eviction_ms: float = 0.0  # charged to the materialised path: EVICTION_MS_PER_MB x its alpha's MB

    @property
    def fused(self) -> bool:
        return self.materialised_ms is None or self.fused_ms <= self.materialised_ms + self.eviction_ms


@dataclass
class GsuRoutes:
    """Measured shapes -> fused or not (service.engine.gsu_route_probe fills it at warm-up)."""

    heads: int = 1
    timings: list[RouteTiming] = field(default_factory=list)

    def fused(self, L: int, C: int) -> bool | None:
        """The route of a forward padded to L behaviors x C candidates: that of the nearest measured
        shape (L, C); always fused where one request's materialised alpha would pass MAX_ALPHA_BYTES;
        None (the model's default, fused) when nothing was measured."""
        if not self.timings:
            return None
        near = min(self.timings, key=lambda t: abs(math.log(t.L / max(L, 1))) + abs(math.log(t.C / max(C, 1))))
        return near.fused or alpha_bytes(L, C, self.heads) > MAX_ALPHA_BYTES
