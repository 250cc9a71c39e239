"""Background probes behind readiness: Redis answers a PING, the device answers a tiny op.

The score path reads `redis_ok` as a circuit breaker: while Redis is marked down, requests skip the
round trips and are scored from what the process holds (degraded) instead of waiting on timeouts.
A failed request trips it at once; the probe closes it again as soon as a PING succeeds.
"""
from __future__ import annotations

import asyncio
import logging

from cache.errors import describe, outage_reason
from service.engine.worker import InferenceWorker
from service.tasks import bounded, cancel_and_wait

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, redis_handle, worker: InferenceWorker, interval_s: float, redis_timeout_s: float,
                 device_timeout_s: float = 5.0):
        self.redis = redis_handle
        self.worker = worker
        self.interval_s = interval_s
        self.redis_timeout_s = redis_timeout_s
        self.device_timeout_s = device_timeout_s
        self.redis_ok = False
        self.redis_reason = "redis_unavailable"  # why Redis is down (cache.errors.outage_reason), for readiness
        self.device_ok = False
        self._checked = False
        self._task: asyncio.Task | None = None

    async def check_once(self) -> None:
        try:
            ok = bool(await bounded(self.redis.client.ping(), self.redis_timeout_s))
            reason = "redis_unavailable"
        except Exception as e:  # noqa: BLE001 - any failure is "unreachable"; its kind names the reason
            ok, reason = False, outage_reason(e)
            if self.redis_ok or not self._checked or reason != self.redis_reason:
                log.warning("redis is UNREACHABLE: %s", describe(e))
        if ok and not self.redis_ok and self._checked:
            log.warning("redis is reachable again")
        self.redis_ok, self.redis_reason, self._checked = ok, reason, True
        self.device_ok = await self.worker.probe(self.device_timeout_s, fresh_s=self.interval_s + self.device_timeout_s)

    def note_redis_failure(self, exc: BaseException | None = None) -> None:
        """A request saw an outage (cache.errors.is_outage): open the breaker until the probe closes it."""
        if self.redis_ok:
            log.warning("redis marked down after a failed request")
        self.redis_ok = False
        if exc is not None:
            self.redis_reason = outage_reason(exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the probe loop must outlive any single failure
                log.exception("health probe failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="twin-health")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
