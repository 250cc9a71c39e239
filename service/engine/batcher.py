"""Micro-batcher in the style of Triton's dynamic batcher.

One asyncio task runs a busy loop of three steps (vLLM's engine core shape):
  1. take work: wait for a request; if the worker was idle, wait up to `max_wait_ms` for more
     (or until the batch is full); drop requests whose deadline passed or whose caller left;
  2. run the batch on the inference thread (requests of ONE model slot per batch);
  3. hand results back through each request's future: as many results as requests, always.
While step 2 runs, new requests queue up, so under load batches fill without waiting.
The queue is bounded: past `queue_max` a request is refused at once (429 + Retry-After).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

from service.engine.forward import run_batch
from service.engine.request import Pending, ScoreInputs, ScoreResult
from service.engine.worker import InferenceWorker
from service.errors import DeadlineExceeded, NotReady, Overloaded
from service.metrics import Metrics

log = logging.getLogger(__name__)


class MicroBatcher:
    def __init__(self, worker: InferenceWorker, metrics: Metrics, *, max_candidates: int, max_requests: int,
                 max_wait_ms: float, queue_max: int):
        self.worker = worker
        self.metrics = metrics
        self.max_candidates = max_candidates
        self.max_requests = max_requests
        self.max_wait_s = max_wait_ms / 1e3
        self.queue_max = queue_max
        self._queue: collections.deque[Pending] = collections.deque()
        self._queued_candidates = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---- front end ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="twin-batcher")

    def submit(self, inputs: ScoreInputs, deadline: float) -> asyncio.Future:
        """Queue a request; its future resolves to a ScoreResult. Raises Overloaded when full."""
        if self.stopped:
            raise NotReady("the engine is not running", reason="engine_stopped")
        if len(self._queue) >= self.queue_max:
            self.metrics.shed.labels(reason="queue_full").inc()
            raise Overloaded(f"queue full ({self.queue_max} requests waiting)", reason="queue_full")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(inputs, deadline, fut, enqueued_at=time.monotonic()))
        self._queued_candidates += inputs.n_cand
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        return fut

    @property
    def stopped(self) -> bool:
        return self._task is None or self._task.done()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Stop the loop after the running batch; fail whatever still waits (never leave a caller hanging)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(NotReady("the engine is shutting down", reason="shutdown"))

    # ---- the loop ----------------------------------------------------------------------------
    def _full(self) -> bool:
        return len(self._queue) >= self.max_requests or self._queued_candidates >= self.max_candidates

    async def _take(self) -> list[Pending]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        # Idle worker: give concurrent requests a moment to join (bounded by the oldest one's wait).
        remaining = self._queue[0].enqueued_at + self.max_wait_s - time.monotonic()
        while remaining > 0 and not self._full():
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            remaining = self._queue[0].enqueued_at + self.max_wait_s - time.monotonic() if self._queue else 0
        batch: list[Pending] = []
        skipped: list[Pending] = []
        n_cand, now = 0, time.monotonic()
        while self._queue and len(batch) < self.max_requests:
            p = self._queue[0]
            if p.future.done():  # the caller gave up (deadline / disconnect): don't run it
                self._pop()
                continue
            if p.deadline <= now:
                self._pop()
                self.metrics.shed.labels(reason="deadline").inc()
                p.future.set_exception(DeadlineExceeded("deadline passed while queued", reason="deadline"))
                continue
            if batch and (p.inputs.slot is not batch[0].inputs.slot or n_cand + p.inputs.n_cand > self.max_candidates):
                if p.inputs.slot is not batch[0].inputs.slot:  # other version: next batch, keep order
                    skipped.append(self._pop())
                    continue
                break
            batch.append(self._pop())
            n_cand += p.inputs.n_cand
        for p in reversed(skipped):
            self._queue.appendleft(p)
            self._queued_candidates += p.inputs.n_cand
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _pop(self) -> Pending:
        p = self._queue.popleft()
        self._queued_candidates -= p.inputs.n_cand
        return p

    async def _loop(self) -> None:
        while True:
            batch = await self._take()  # step 1
            if not batch:
                continue
            started = time.monotonic()
            for p in batch:
                p.started_at = started
            slot = batch[0].inputs.slot
            try:
                results: list[ScoreResult] = await self.worker.call(run_batch, slot, [p.inputs for p in batch])  # step 2
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(NotReady("the engine is shutting down", reason="shutdown"))
                raise
            except Exception as e:  # noqa: BLE001 - one bad batch must not kill the loop
                log.exception("batch of %d requests on model %s failed", len(batch), slot.version)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.metrics.batch_size.labels(unit="requests").observe(len(batch))
            self.metrics.batch_size.labels(unit="candidates").observe(sum(p.inputs.n_cand for p in batch))
            for p, r in zip(batch, results, strict=True):  # step 3
                r.queue_ms = (p.started_at - p.enqueued_at) * 1e3
                if not p.future.done():
                    p.future.set_result(r)
