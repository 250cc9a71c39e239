"""Prometheus metrics of one app instance, in a registry of its own (tests build many apps)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.user_sequence_cache import OUTCOMES

# 0.25 ms .. 2.5 s: the interesting range of a 30 ms budget, with room for the tail.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram("twin_request_latency_seconds", "Score latency by stage",
                                 ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("twin_requests_total", "HTTP requests by route and status code",
                                ["endpoint", "code"], registry=r)
        self.batch_size = Histogram("twin_batch_size", "Model calls: requests and candidates per batch",
                                    ["unit"], buckets=SIZE_BUCKETS, registry=r)
        self.queue_depth = Gauge("twin_queue_depth", "Requests waiting for the inference thread", registry=r)
        self.cache_hits = Counter("twin_cache_hits", "Local projection cache hits", registry=r)
        self.cache_misses = Counter("twin_cache_misses", "Local projection cache misses", registry=r)
        self.degraded = Counter("twin_degraded", "Degraded score responses by reason", ["reason"], registry=r)
        self.shed = Counter("twin_shed", "Requests refused or dropped under load by reason", ["reason"], registry=r)
        self.active_model = Gauge("twin_active_model_info", "1 for the version serving new requests",
                                  ["version"], registry=r)

    def watch_caches(self, active_slot: Callable[[], Any]) -> None:
        """Export the user-sequence and catalog-row caches of the slot `active_slot()` returns, read at
        scrape time (no per-request cost). They belong to the slot, so a model swap resets them."""
        self.registry.register(_SlotCachesCollector(active_slot))

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.latency.labels(stage=stage).observe(ms / 1e3)

    def set_active(self, version: str) -> None:
        self.active_model.clear()
        self.active_model.labels(version=version).set(1)


class _SlotCachesCollector(Collector):
    def __init__(self, active_slot: Callable[[], Any]) -> None:
        self._active_slot = active_slot

    def collect(self) -> Iterator[Metric]:
        slot = self._active_slot()
        users = getattr(slot, "user_cache", None)
        if users is not None:
            st = users.stats()
            looks = CounterMetricFamily("twin_user_cache_lookups", "User sequence cache lookups by outcome",
                                        labels=["result"])
            for result in OUTCOMES:
                looks.add_metric([result], st[result])
            yield looks
            yield CounterMetricFamily("twin_user_cache_evictions", "User sequences evicted (LRU, bytes bound)",
                                      value=st["evictions"])
            yield GaugeMetricFamily("twin_user_cache_bytes", "Bytes held by the user sequence cache", value=st["bytes"])
            yield GaugeMetricFamily("twin_user_cache_entries", "Users held by the user sequence cache",
                                    value=st["entries"])
        rows = getattr(slot, "catalog_cache", None)
        if rows is not None:
            st = rows.stats()
            yield CounterMetricFamily("twin_catalog_cache_hits", "Catalog row cache hits (per id)", value=st["hits"])
            yield CounterMetricFamily("twin_catalog_cache_misses", "Catalog row cache misses (per id, expired "
                                      "included)", value=st["misses"])
            yield CounterMetricFamily("twin_catalog_cache_evictions", "Catalog rows evicted (LRU, capacity bound)",
                                      value=st["evictions"])
            yield GaugeMetricFamily("twin_catalog_cache_rows", "Rows held by the catalog row cache", value=st["size"])
