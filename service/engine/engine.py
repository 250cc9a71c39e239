"""The engine client the HTTP layer talks to: the active model slot, the fetcher, the batcher and the
worker, and the score use case over them (`score`: admit, fetch, queue, answer, release).

Switching models is one reference assignment (`swap`); a request captures the slot when it starts
and every batch holds the slot of its requests, so in-flight work finishes on its own version.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

import numpy as np

from service.engine.batcher import Admission, MicroBatcher
from service.engine.fetch import Fetched, Fetcher
from service.engine.request import ScoreInputs, ScoreResult
from service.engine.slot import ModelSlot
from service.engine.worker import InferenceWorker
from service.errors import DeadlineExceeded
from service.metrics import Metrics
from service.settings import Settings
from service.tasks import bounded

log = logging.getLogger(__name__)


@dataclass
class Scored:
    fetched: Fetched      # what was read (degraded reasons, cache counts, the sequence for explain)
    result: ScoreResult   # the model's answer
    admit_ms: float       # waiting for a place in the fetch window


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, worker: InferenceWorker, fetcher: Fetcher):
        self.worker = worker
        self.fetcher = fetcher
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

    async def score(self, slot: ModelSlot, user_id: int, cand: np.ndarray, given: np.ndarray, now: int,
                    explain: bool, deadline: float) -> Scored:
        """One score request on `slot` (pinned by the caller), cand/given as Fetcher.fetch takes them."""
        t_admit = time.perf_counter()
        admission = await self.admit(len(cand), deadline)  # 1. admit: fetch only what the model will reach soon
        admit_ms = (time.perf_counter() - t_admit) * 1e3
        try:
            fetched = await self.fetcher.fetch(slot, user_id, cand, given, now, explain, deadline)  # 2. fetch
            result = await self.run(fetched.inputs, deadline, admission)  # 3. queue, 4. answer
        finally:
            admission.release()  # 5. release (also when the fetch or the deadline failed it)
        return Scored(fetched, result, admit_ms)

    async def admit(self, n_cand: int, deadline: float) -> Admission:
        """Before the fetch: a place in the batcher's fetch window (release it in a finally)."""
        return await self.batcher.admit(n_cand, deadline)

    async def run(self, inputs: ScoreInputs, deadline: float, admission: Admission | None = None) -> ScoreResult:
        """Queue one request and wait for its result until `deadline` (time.monotonic())."""
        fut = self.batcher.submit(inputs, deadline, admission)
        try:
            return await bounded(fut, deadline - time.monotonic())
        except TimeoutError:  # bounded cancelled the future: the batcher will skip it if not yet run
            self.metrics.shed.labels(reason="deadline").inc()
            raise DeadlineExceeded("deadline passed before the model answered", reason="deadline") from None

    async def close(self) -> None:
        await self.batcher.close()
        self.worker.close()
