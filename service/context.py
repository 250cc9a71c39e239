"""Everything the handlers need, built once in the app lifespan (no import-time globals)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_store.registry import ModelRegistry
from service.engine.engine import Engine
from service.health import HealthMonitor
from service.lifecycle import ModelManager
from service.metrics import Metrics
from service.settings import Settings


@dataclass(eq=False)
class ServiceContext:
    settings: Settings
    metrics: Metrics
    redis: Any  # cache.connection.RedisHandle
    keys: Any   # cache.layout.Keys
    registry: ModelRegistry
    engine: Engine
    health: HealthMonitor
    models: ModelManager

    def not_ready_reasons(self) -> list[str]:
        """Empty = ready = warm: a model loaded, projected and warmed, Redis and the device answer."""
        reasons = list(self.models.reasons)
        if self.engine.active is None and not reasons:
            reasons.append("no_active_model")
        if not self.health.redis_ok:
            reasons.append(self.health.redis_reason)
        if not self.health.device_ok:
            reasons.append("device_unavailable")
        if self.engine.batcher.stopped:
            reasons.append("engine_stopped")
        return reasons
