"""Device-memory cache of item projections in front of Redis (HugeCTR HPS-style).

Symbols: N ids per gather, D projection width, Cap = capacity (slots).

    slab   [Cap, D] float16 on `device`         one row per cached item (numpy on the CPU)
    index  IdIndex item id -> slot              vectorized numpy hash map (no per-id Python loop)
    last   int64 [Cap]                          tick of each slot's last access (approximate LRU)

gather(ids) in three phases, so the lock is never held across an await:
  1. (lock) look every id up at once, stamp the hits' ticks, copy the hit rows into the output;
  2. (no lock) the distinct missing ids: one pipelined read from Redis; those Redis lacks are
     read from the catalog and computed with compute_fn (in a worker thread), then written back
     to Redis; ids that still have no vector get the DEFAULT (zero vector) and are counted as
     `defaulted`, which callers surface as degraded. Redis errors count as misses of that tier
     (never raised): a gather always returns a full [N, D] tensor;
  3. (lock) insert the fetched/computed rows, evicting the least recently used slots in bulk
     (at least Cap/16 at a time, so eviction's argpartition is amortized over many misses).
Because hit rows are copied out in phase 1, a concurrent gather evicting them cannot corrupt
this one's result. Defaulted ids are not cached, so they are retried on the next gather.

Worked example: Cap=4, cache holds {7, 9}; gather([9, 5, 9]) -> hits=2 (positions 0 and 2),
misses=1; id 5 is read from Redis (filled_from_redis=1) and takes a free slot.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from redis.exceptions import RedisError

from cache.catalog_store import CatalogStore
from cache.id_index import IdIndex
from cache.layout import check_ids
from cache.projection_store import ProjectionStore

log = logging.getLogger(__name__)

ComputeFn = Callable[[np.ndarray], np.ndarray]  # raw int64 [N, F_h] -> float16 [N, D]
WARN_EVERY_S = 10.0
COUNTERS = ("hits", "misses", "fills", "computed", "defaulted", "evictions", "redis_errors", "compute_errors")


@dataclass
class GatherResult:
    vecs: torch.Tensor  # [N, D] float16 on the cache's device, request order
    hits: int  # positions served from the slab
    misses: int  # positions not in the slab
    filled_from_redis: int  # distinct ids read from Redis
    computed: int  # distinct ids computed from the catalog
    defaulted: int  # distinct ids given the default vector (caller flags degraded)


class LocalProjectionCache:
    def __init__(self, capacity: int, dim: int, device: torch.device | str, store: ProjectionStore,
                 catalog: CatalogStore | None, compute_fn: ComputeFn | None,
                 evict_fraction: float = 1 / 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if dim != store.dim:
            raise ValueError(f"cache dim {dim} != projection store dim {store.dim}")
        if not 0 < evict_fraction <= 1:
            raise ValueError(f"evict_fraction must be in (0, 1], got {evict_fraction}")
        self.capacity, self.dim = capacity, dim
        self.device = torch.device(device)
        self.store, self.catalog, self.compute_fn = store, catalog, compute_fn
        self._evict_min = max(1, int(capacity * evict_fraction))
        # On the CPU the slab is a numpy array (exposed as a tensor without a copy): numpy's
        # row gathers are single-threaded memcpy loops, ~0.3 ms per 10,000 rows, where torch's
        # index ops wake its intra-op thread pool and cost 1-12 ms on a busy 2-core host.
        self._host = self.device.type == "cpu"
        self._slab: np.ndarray | torch.Tensor = (  # [Cap, D] float16
            np.zeros((capacity, dim), np.float16) if self._host
            else torch.zeros((capacity, dim), dtype=torch.float16, device=self.device))
        self._index = IdIndex(capacity)
        self._slot_key = np.full(capacity, -1, np.int64)  # [Cap] item id per slot, -1 = free
        self._last = np.zeros(capacity, np.int64)  # [Cap] last access tick
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # stack; top = end
        self._n_free = capacity
        self._tick = 0
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(COUNTERS, 0)
        self._last_warn = -WARN_EVERY_S

    # ---- public API -----------------------------------------------------------------------
    async def gather(self, item_ids: np.ndarray) -> GatherResult:
        """item_ids int64 [N] -> GatherResult with vecs [N, D] float16 on the device."""
        ids = check_ids(item_ids)
        n = ids.size
        # 1. hits, under the lock, copied out immediately.
        with self._lock:
            self._tick += 1
            slots = self._index.lookup(ids)  # int32 [N], -1 = miss
            hit = slots >= 0
            n_hit = int(hit.sum())
            self._last[slots[hit]] = self._tick
            if n_hit == n:
                out = self._take(self._slab, slots)  # [N, D]
            else:
                out = self._empty(n)  # every row is written: hits now, misses after the fetch
                if n_hit:
                    self._put(out, np.flatnonzero(hit), self._take(self._slab, slots[hit]))
            self._stats["hits"] += n_hit
            self._stats["misses"] += n - n_hit
        if n_hit == n:
            return GatherResult(self._tensor(out), n_hit, 0, 0, 0, 0)

        # 2. misses: Redis, then catalog + compute, then the default.
        miss_pos = np.flatnonzero(~hit)
        miss_ids, inverse = np.unique(ids[miss_pos], return_inverse=True)  # [U], [M]
        vecs, have, n_fill, n_comp = await self._fetch(miss_ids)  # float16 [U, D], bool [U]
        n_default = int((~have).sum())
        if n_default:
            self._warn("%d item(s) have no projection for version %s; using the zero vector (e.g. %s)",
                       n_default, self.store.version, miss_ids[~have][:5].tolist())
        vt = vecs if self._host else self._to_dev(vecs)  # [U, D]
        self._put(out, miss_pos, self._take(vt, inverse.ravel()))

        # 3. insert what we found, evicting in bulk.
        with self._lock:
            self._insert(miss_ids[have], vt if have.all() else self._take(vt, np.flatnonzero(have)))
            self._stats["fills"] += n_fill
            self._stats["computed"] += n_comp
            self._stats["defaulted"] += n_default
        return GatherResult(self._tensor(out), n_hit, n - n_hit, n_fill, n_comp, n_default)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._stats, "size": self._index.size, "capacity": self.capacity}

    def invalidate(self, item_ids: np.ndarray) -> None:
        """Drop ids (e.g. after an incremental re-projection of changed items)."""
        ids = check_ids(item_ids)
        with self._lock:
            slots = self._index.lookup(ids)
            self._release(np.unique(slots[slots >= 0]).astype(np.int64))

    def clear(self) -> None:
        with self._lock:
            self._release(np.flatnonzero(self._slot_key >= 0))

    # ---- internals --------------------------------------------------------------------------
    def _to_dev(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    # Row ops on the slab's kind of array (numpy on the CPU, torch on an accelerator).
    def _empty(self, n: int) -> np.ndarray | torch.Tensor:
        if self._host:
            return np.empty((n, self.dim), np.float16)
        return torch.empty((n, self.dim), dtype=torch.float16, device=self.device)

    def _take(self, src: np.ndarray | torch.Tensor, rows: np.ndarray) -> np.ndarray | torch.Tensor:
        """src[rows] for rows int [K] -> [K, D]"""
        if self._host:
            return src[rows]
        return src.index_select(0, self._to_dev(rows.astype(np.int64)))

    def _put(self, dst: np.ndarray | torch.Tensor, rows: np.ndarray, vals: np.ndarray | torch.Tensor) -> None:
        """dst[rows] = vals"""
        if self._host:
            dst[rows] = vals
        else:
            dst.index_copy_(0, self._to_dev(rows.astype(np.int64)), vals)

    def _tensor(self, out: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(out) if self._host else out

    async def _fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        """distinct ids [U] -> (vecs float16 [U, D], have bool [U], n from Redis, n computed)"""
        u = ids.size
        vecs, have = np.zeros((u, self.dim), np.float16), np.zeros(u, bool)
        try:
            vecs, have = await self.store.get(ids)
        except (RedisError, OSError) as e:
            self._count("redis_errors")
            self._warn("projection read from Redis failed (%s): computing or defaulting %d items", e, u)
        n_fill = int(have.sum())
        need = np.flatnonzero(~have)
        if need.size == 0 or self.catalog is None or self.compute_fn is None:
            return vecs, have, n_fill, 0
        try:
            raw, in_cat = await self.catalog.get(ids[need])  # int64 [K, F_h], bool [K]
        except (RedisError, OSError) as e:
            self._count("redis_errors")
            self._warn("catalog read from Redis failed (%s): defaulting %d items", e, need.size)
            return vecs, have, n_fill, 0
        need = need[in_cat]
        if need.size == 0:
            return vecs, have, n_fill, 0
        try:
            comp = await asyncio.to_thread(self.compute_fn, np.ascontiguousarray(raw[in_cat]))
            comp = np.asarray(comp, dtype=np.float16)
            if comp.shape != (need.size, self.dim):
                raise ValueError(f"compute_fn returned shape {comp.shape}, expected ({need.size}, {self.dim})")
        except Exception as e:  # a broken model must degrade answers, not fail them
            self._count("compute_errors")
            self._warn("compute_fn failed for %d items: %s", need.size, e)
            return vecs, have, n_fill, 0
        vecs[need], have[need] = comp, True
        try:
            await self.store.put(ids[need], comp)
        except (RedisError, OSError) as e:
            self._count("redis_errors")
            self._warn("write-back of %d computed projections failed: %s", need.size, e)
        return vecs, have, n_fill, int(need.size)

    def _warn(self, msg: str, *args: object) -> None:
        """At most one warning per WARN_EVERY_S: an outage must not flood the log per request
        (the counters carry the totals)."""
        now = time.monotonic()
        if now - self._last_warn >= WARN_EVERY_S:
            self._last_warn = now
            log.warning(msg, *args)

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self._stats[name] += k

    def _insert(self, ids: np.ndarray, rows: np.ndarray | torch.Tensor) -> None:
        """Under the lock. ids int64 [K] distinct, rows [K, D] of the slab's kind."""
        if ids.size == 0:
            return
        new = self._index.lookup(ids) < 0  # a concurrent gather may have inserted some already
        if not new.all():
            ids, rows = ids[new], self._take(rows, np.flatnonzero(new))
        k = min(ids.size, self.capacity)  # more new ids than slots: cache the first Cap
        ids, rows = ids[:k], rows[:k]
        if k > self._n_free:
            self._evict(k - self._n_free)
        slots = self._free[self._n_free - k:self._n_free].copy()
        self._n_free -= k
        self._put(self._slab, slots, rows)
        self._slot_key[slots] = ids
        self._last[slots] = self._tick
        self._index.insert(ids, slots.astype(np.int32))

    def _evict(self, need: int) -> None:
        used = np.flatnonzero(self._slot_key >= 0)
        k = min(max(need, self._evict_min), used.size)
        victims = used[np.argpartition(self._last[used], k - 1)[:k]] if k < used.size else used
        self._release(victims)
        self._stats["evictions"] += int(victims.size)

    def _release(self, slots: np.ndarray) -> None:
        if slots.size == 0:
            return
        self._index.delete(self._slot_key[slots])
        self._slot_key[slots] = -1
        self._free[self._n_free:self._n_free + slots.size] = slots
        self._n_free += slots.size
