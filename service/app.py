"""The app factory: `create_app(settings)` builds a FastAPI app whose lifespan opens Redis, the model
registry, the inference thread, the batcher and the health probes, prepares the active model, and
closes all of it on shutdown (in reverse order)."""
from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from model_store.registry import ModelRegistry
from service.api.router import api_router
from service.context import ServiceContext
from service.engine.engine import Engine
from service.engine.fetch import Fetcher
from service.engine.worker import InferenceWorker, resolve_device
from service.body_deadline import BodyDeadline
from service.errors import BugBarrier, install_error_handlers
from service.health import HealthMonitor
from service.lifecycle import ModelManager
from service.metrics import Metrics
from service.middleware import RequestMetricsMiddleware
from service.settings import Settings

log = logging.getLogger(__name__)


async def build_context(settings: Settings, metrics: Metrics) -> ServiceContext:
    from cache.connection import open_redis
    from cache.layout import Keys

    embedded_dir = str(settings.embedded_redis_dir) if settings.embedded_redis_dir else None
    redis = await open_redis(settings.redis_url, embedded_dir=embedded_dir)
    keys = Keys(prefix=settings.redis_prefix, n_buckets=settings.redis_buckets)
    registry = ModelRegistry(settings.model_root)
    worker = InferenceWorker(resolve_device(settings.device), settings.torch_threads, settings.parallel_threads)
    health = HealthMonitor(redis, worker, settings.redis_ping_interval_s, settings.redis_timeout_ms / 1e3)
    engine = Engine(settings, metrics, worker, Fetcher(health, settings.redis_timeout_ms / 1e3))
    metrics.watch_caches(lambda: engine.active)
    models = ModelManager(settings, registry, redis, keys, engine)
    return ServiceContext(settings, metrics, redis, keys, registry, engine, health, models)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting: pid %d, model root %s", os.getpid(), settings.model_root)
        # The ~10^5 objects of the imported libraries live as long as the process: out of the
        # collector's sight, a full collection scans only what serving allocates (full collections
        # took 25-110 ms each in this process while it started).
        gc.collect()
        gc.freeze()
        ctx = await build_context(settings, metrics)
        app.state.ctx = ctx
        ctx.engine.start()
        await ctx.health.check_once()
        await ctx.models.startup()  # warm before uvicorn accepts traffic (readiness means warm)
        ctx.health.start()
        ctx.models.start_watch(settings.model_poll_interval_s)
        log.info("service up: redis %s, device %s, model %s, ready=%s", ctx.redis.url, ctx.engine.worker.device,
                 ctx.engine.active.version if ctx.engine.active else None, not ctx.not_ready_reasons())
        try:
            yield
        finally:
            await ctx.models.close()
            await ctx.health.close()
            await ctx.engine.close()
            await ctx.redis.aclose()

    app = FastAPI(title="TWIN scoring service", version="1.0.0", lifespan=lifespan,
                  max_body_size=settings.max_body_bytes,
                  description="Online CTR scoring with TWIN (two-stage interest network, KDD 2023).")
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s)  # innermost: its 408s are counted
    app.add_middleware(BugBarrier)  # inside the metrics middleware, so the 500s it answers are counted
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.include_router(api_router)
    app.openapi = lambda: custom_openapi(app, settings)  # type: ignore[method-assign]
    return app


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _integral_bounds(node: Any) -> Any:
    """pydantic writes integer bounds as floats (2^63 as 9.223372036854776e+18): write them as the
    integers they are, so every reader, float64 or bignum, gets the exact bound."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _BOUNDS and isinstance(v, float) and v.is_integer():
                node[k] = int(v)
            else:
                _integral_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _integral_bounds(v)
    return node


def custom_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The generated document, plus the limits that are settings rather than constants."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.get("components", {}).get("schemas", {})
        if "ScoreRequest" in schemas:
            schemas["ScoreRequest"]["properties"]["candidates"]["maxItems"] = settings.max_candidates
        if "EventsRequest" in schemas:
            schemas["EventsRequest"]["properties"]["events"]["maxItems"] = settings.max_events
        doc["info"]["x-max-body-bytes"] = settings.max_body_bytes
        app.openapi_schema = _integral_bounds(doc)
    return app.openapi_schema
