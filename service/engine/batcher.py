"""Micro-batcher in the style of Triton's dynamic batcher.

One asyncio task runs a busy loop of three steps (vLLM's engine core shape):
  1. take work: wait for a request; if the worker was idle and other requests are still being
     fetched, wait up to `max_wait_ms` for them (or until the batch is full); with none on the way,
     run at once (a lone request pays no batching wait); drop requests whose deadline passed or
     whose caller left;
  2. run the batch on the inference thread (requests of ONE model slot per batch);
  3. hand results back through each request's future: as many results as requests, always.
While step 2 runs, new requests queue up, so under load batches fill without waiting.

Admission (before the fetch): requests fetched or being fetched but not yet in a batch hold at most
two batches' worth of candidates (`window_candidates`); later ones wait, unfetched. A burst then does
not fetch far ahead of the model: its Redis budget is not spent waiting on our own busy loop (which
scored requests degraded), and its data is not stale by the time it runs.
The queue is bounded: past `queue_max` waiting requests (admission + queue) a request is refused at
once (429 + Retry-After).

Background work for the inference thread (the warm-up of a version being prepared while another
serves) goes through `run_when_idle`: a job runs between batches, only when no request is queued or
being fetched, so serving requests never wait behind it for more than one job; a job kept out that
way for IDLE_PATIENCE_S runs at the next empty queue even while requests are being fetched.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.engine.forward import run_batch
from service.engine.request import Pending, ScoreInputs, ScoreResult
from service.engine.worker import InferenceWorker
from service.errors import DeadlineExceeded, NotReady, Overloaded
from service.metrics import Metrics
from service.tasks import bounded, cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_PATIENCE_S = 2.0


class Admission:
    """A request's place in the fetch window, from `MicroBatcher.admit` until its batch starts or it
    leaves. `submitted` and `release` are idempotent; the caller releases in a finally."""

    def __init__(self, batcher: "MicroBatcher", n_cand: int):
        self._batcher, self.n_cand = batcher, n_cand
        self._fetching = self._held = True

    def submitted(self) -> None:
        if self._fetching:
            self._fetching = False
            self._batcher._end_fetch()

    def release(self) -> None:
        self.submitted()
        if self._held:
            self._held = False
            self._batcher._end_admission(self.n_cand)


class MicroBatcher:
    def __init__(self, worker: InferenceWorker, metrics: Metrics, *, max_candidates: int, max_requests: int,
                 max_wait_ms: float, queue_max: int):
        self.worker = worker
        self.metrics = metrics
        self.max_candidates = max_candidates
        self.max_requests = max_requests
        self.max_wait_s = max_wait_ms / 1e3
        self.queue_max = queue_max
        self.window_candidates = 2 * max_candidates
        self._queue: collections.deque[Pending] = collections.deque()
        self._queued_candidates = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._admitted_candidates = 0  # of requests admitted and not yet in a batch
        self._fetching = 0  # admitted requests not yet submitted
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()  # FIFO
        self._idle_jobs: collections.deque[tuple[float, Callable[..., Any], tuple, asyncio.Future]] = \
            collections.deque()

    def _fits(self, n_cand: int) -> bool:
        return self._admitted_candidates == 0 or self._admitted_candidates + n_cand <= self.window_candidates

    def _end_fetch(self) -> None:
        self._fetching -= 1
        self._wakeup.set()  # an idle batcher waiting for fetches re-checks

    def _end_admission(self, n_cand: int) -> None:
        self._admitted_candidates -= n_cand
        self._grant()

    def _grant(self) -> None:
        """Admit waiters in arrival order while they fit (each wakes exactly once)."""
        while self._waiters:
            n_cand, fut = self._waiters[0]
            if fut.done():  # gave up (deadline, disconnect)
                self._waiters.popleft()
                continue
            if not self._fits(n_cand):
                break
            self._waiters.popleft()
            self._admitted_candidates += n_cand
            self._fetching += 1
            fut.set_result(None)
        self._set_depth()

    async def admit(self, n_cand: int, deadline: float) -> Admission:
        """Wait (FIFO) for room in the fetch window; a request alone always fits. Raises Overloaded when
        queue_max requests already wait, DeadlineExceeded at `deadline` (time.monotonic())."""
        if self.stopped:
            raise NotReady("the engine is not running", reason="engine_stopped")
        if len(self._waiters) + len(self._queue) >= self.queue_max:
            self.metrics.shed.labels(reason="queue_full").inc()
            raise Overloaded(f"queue full ({self.queue_max} requests waiting)", reason="queue_full")
        if not self._waiters and self._fits(n_cand):
            self._admitted_candidates += n_cand
            self._fetching += 1
            return Admission(self, n_cand)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n_cand, fut))
        self._set_depth()
        try:
            await bounded(fut, deadline - time.monotonic())
        except BaseException as e:
            if fut.done() and not fut.cancelled() and fut.exception() is None:  # granted as we left
                Admission(self, n_cand).release()
            if isinstance(e, TimeoutError):
                self.metrics.shed.labels(reason="deadline").inc()
                raise DeadlineExceeded("deadline passed while waiting for admission", reason="deadline") from None
            raise
        finally:
            self._set_depth()
        return Admission(self, n_cand)

    def _set_depth(self) -> None:
        self.metrics.queue_depth.set(len(self._queue) + len(self._waiters))

    # ---- front end ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="twin-batcher")

    def submit(self, inputs: ScoreInputs, deadline: float, admission: Admission | None = None) -> asyncio.Future:
        """Queue a request; its future resolves to a ScoreResult. Raises Overloaded when full.
        Its admission (if any) is released when its batch starts."""
        if admission is not None:
            admission.submitted()
        if self.stopped:
            raise NotReady("the engine is not running", reason="engine_stopped")
        if len(self._queue) >= self.queue_max:
            self.metrics.shed.labels(reason="queue_full").inc()
            raise Overloaded(f"queue full ({self.queue_max} requests waiting)", reason="queue_full")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(inputs, deadline, fut, enqueued_at=time.monotonic(), admission=admission))
        self._queued_candidates += inputs.n_cand
        self._set_depth()
        self._wakeup.set()
        return fut

    @property
    def stopped(self) -> bool:
        return self._task is None or self._task.done()

    async def close(self) -> None:
        """Stop the loop after the running batch; fail whatever still waits (never leave a caller hanging)."""
        await cancel_and_wait(self._task)
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(NotReady("the engine is shutting down", reason="shutdown"))
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(NotReady("the engine is shutting down", reason="shutdown"))
        while self._idle_jobs:
            fut = self._idle_jobs.popleft()[3]
            if not fut.done():
                fut.set_exception(NotReady("the engine is shutting down", reason="shutdown"))

    async def run_when_idle(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the inference thread, at low priority (see the module doc); its result."""
        if self.stopped:
            raise NotReady("the engine is not running", reason="engine_stopped")
        fut = asyncio.get_running_loop().create_future()
        self._idle_jobs.append((time.monotonic(), fn, args, fut))
        self._wakeup.set()
        return await fut

    def _idle_job_due(self) -> bool:
        if not self._idle_jobs or self._queue or self._waiters:
            return False
        return self._fetching == 0 or time.monotonic() - self._idle_jobs[0][0] > IDLE_PATIENCE_S

    async def _run_idle_job(self) -> None:
        _, fn, args, fut = self._idle_jobs.popleft()
        if fut.done():  # its caller gave up
            return
        try:
            out = await self.worker.call(fn, *args)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - the job's failure is its caller's, not the loop's
            if not fut.done():
                fut.set_exception(e)
            return
        if not fut.done():
            fut.set_result(out)

    # ---- the loop ----------------------------------------------------------------------------
    def _full(self) -> bool:
        return len(self._queue) >= self.max_requests or self._queued_candidates >= self.max_candidates

    async def _take(self) -> list[Pending]:
        while not self._queue:
            if self._idle_job_due():
                return []  # the loop runs it
            self._wakeup.clear()
            if self._idle_jobs:  # waiting for fetches to end: re-check when its patience runs out
                with contextlib.suppress(TimeoutError):
                    await bounded(self._wakeup.wait(), IDLE_PATIENCE_S)
            else:
                await self._wakeup.wait()
        # Idle worker: give requests still being fetched a moment to join (bounded by the oldest one's wait).
        remaining = self._queue[0].enqueued_at + self.max_wait_s - time.monotonic()
        while remaining > 0 and not self._full() and self._fetching > 0:
            self._wakeup.clear()
            try:
                await bounded(self._wakeup.wait(), remaining)
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
            if p.admission is not None:  # _pop released it, but it still waits
                p.admission = None
        self._set_depth()
        return batch

    def _pop(self) -> Pending:
        """Out of the queue: into a batch, or dropped. Either way its admission ends (the next requests
        start fetching while this batch runs)."""
        p = self._queue.popleft()
        self._queued_candidates -= p.inputs.n_cand
        if p.admission is not None:
            p.admission.release()
        return p

    async def _loop(self) -> None:
        while True:
            batch = await self._take()  # step 1
            if not batch and self._idle_job_due():
                await self._run_idle_job()
                continue
            if not batch:
                continue
            started = time.monotonic()
            for p in batch:
                p.started_at = started
            slot = batch[0].inputs.slot
            try:
                results: list[ScoreResult] = await self.worker.call(  # step 2
                    run_batch, slot, [p.inputs for p in batch], self.worker.branches, self.worker.parallel)
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
