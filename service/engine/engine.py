"""The engine client the HTTP layer talks to: the active model slot, the batcher and the worker.

Switching models is one reference assignment (`swap`); a request captures the slot when it starts
and every batch holds the slot of its requests, so in-flight work finishes on its own version.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from service.engine.batcher import Admission, MicroBatcher
from service.engine.request import ScoreInputs, ScoreResult
from service.engine.slot import ModelSlot
from service.engine.worker import InferenceWorker
from service.errors import DeadlineExceeded
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, worker: InferenceWorker):
        self.worker = worker
        self.metrics = metrics
        max_cand = settings.batch_max_candidates or (4096 if worker.device.type == "cuda" else 256)
        self.batcher = MicroBatcher(worker, metrics, max_candidates=max_cand,
                                    max_requests=settings.batch_max_requests,
                                    max_wait_ms=settings.batch_max_wait_ms, queue_max=settings.queue_max)
        self._active: ModelSlot | None = None

    @property
    def active(self) -> ModelSlot | None:
        return self._active

    def swap(self, slot: ModelSlot) -> ModelSlot | None:
        """Make `slot` serve new requests; returns the previous one (still finishing its batches)."""
        old, self._active = self._active, slot
        self.metrics.set_active(slot.version)
        # Everything alive now (imports, the model, the stores) is long-lived: keep it out of the cyclic
        # GC's full collections, which otherwise scan it all and pause both threads for 50-150 ms under
        # load (seen as Redis-budget timeouts, i.e. degraded answers, at concurrency 32 on 2 cores).
        gc.freeze()
        log.info("model %s now serving (was %s)", slot.version, old.version if old else None)
        return old

    def start(self) -> None:
        self.batcher.start()

    async def admit(self, n_cand: int, deadline: float) -> Admission:
        """Before the fetch: a place in the batcher's fetch window (release it in a finally)."""
        return await self.batcher.admit(n_cand, deadline)

    async def run(self, inputs: ScoreInputs, deadline: float, admission: Admission | None = None) -> ScoreResult:
        """Queue one request and wait for its result until `deadline` (time.monotonic())."""
        fut = self.batcher.submit(inputs, deadline, admission)
        try:
            return await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:  # wait_for cancelled the future: the batcher will skip it if not yet run
            self.metrics.shed.labels(reason="deadline").inc()
            raise DeadlineExceeded("deadline passed before the model answered", reason="deadline") from None

    async def close(self) -> None:
        await self.batcher.close()
        self.worker.close()
