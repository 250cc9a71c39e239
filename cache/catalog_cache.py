"""Catalog rows in process memory in front of CatalogStore, each row kept at most `ttl_s`.

A score request needs the raw inherent features of its candidates and of its S newest behaviors:
~150 ids, which through Redis cost one HMGET per touched bucket and ~20 us of redis-py work per
reply. The hot ids repeat across requests, so they are served from here.

Symbols: N ids per get, Cap capacity (rows), F_h inherent raw features.

    rows     int64 [Cap, F_h]    one catalog row per slot
    slots    SlotTable id -> slot  vectorized id index + LRU ticks + free list (slot_table.py)
    expires  float64 [Cap]       clock time after which the slot's row is read again

get(ids): (1) look every id up at once; a present, unexpired row is a hit; (2) the distinct misses:
one CatalogStore.get round trip (a Redis error propagates: the caller degrades, as without the
cache); (3) the rows found are inserted (expired ones refreshed in place), evicting the least
recently used slots in bulk (at least Cap/16 at a time). Ids the catalog lacks are not cached, so a
new item is served as soon as it is written. A catalog update is seen within ttl_s, at once where
the writer's process calls `invalidate`. Used from the event loop only (no lock): the index and the
arrays change only between awaits.

Worked example: ttl 60 s, empty cache; get([5, 9, 5]) -> misses 3, one Redis read of {5, 9}, both
cached until now + 60; get([9]) 10 s later -> hit; get([9]) 61 s after the insert -> miss, re-read.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from cache.catalog_store import CatalogStore
from cache.layout import check_ids
from cache.slot_table import SlotTable

COUNTERS = ("hits", "misses", "expired", "evictions")


class CatalogRowCache:
    """get(ids) -> (raw int64 [N, F_h], found bool [N]), the CatalogStore.get contract."""

    def __init__(self, store: CatalogStore, capacity: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic, evict_fraction: float = 1 / 16) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._slots = SlotTable(capacity, evict_fraction)  # validates both
        self.store, self.capacity, self.ttl_s, self.clock = store, capacity, ttl_s, clock
        self.n_features = store.n_features
        self._rows = np.zeros((capacity, self.n_features), np.int64)  # [Cap, F_h]
        self._expires = np.zeros(capacity, np.float64)  # [Cap]
        self._stats = dict.fromkeys(COUNTERS, 0)

    async def get(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """item_ids int64 [N] -> (raw int64 [N, F_h], found bool [N]) in request order."""
        ids = check_ids(item_ids)
        self._slots.tick += 1
        slots = self._slots.lookup(ids)  # int32 [N], -1 = absent
        present = slots >= 0
        fresh = present.copy()
        fresh[present] = self._expires[slots[present]] > self.clock()
        out = np.zeros((ids.size, self.n_features), np.int64)  # [N, F_h]
        out[fresh] = self._rows[slots[fresh]]
        self._slots.touch(slots[fresh])
        n_hit = int(fresh.sum())
        self._stats["hits"] += n_hit
        self._stats["misses"] += ids.size - n_hit
        self._stats["expired"] += int(present.sum()) - n_hit
        if n_hit == ids.size:
            return out, fresh
        miss = np.flatnonzero(~fresh)
        uniq, inverse = np.unique(ids[miss], return_inverse=True)  # [U], [M]
        raw, have = await self.store.get(uniq)  # [U, F_h], [U]
        out[miss] = raw[inverse.ravel()]
        found = fresh
        found[miss] = have[inverse.ravel()]
        self._insert(uniq[have], raw[have], self.clock() + self.ttl_s)
        return out, found

    def invalidate(self, item_ids: np.ndarray) -> None:
        """Forget ids whose catalog rows changed (the next get reads them from Redis)."""
        self._slots.forget(check_ids(item_ids))

    def clear(self) -> None:
        self._slots.clear()

    def stats(self) -> dict[str, int]:
        return {**self._stats, "evictions": self._slots.evictions, "size": self._slots.size, "capacity": self.capacity}

    # ---- internals ----------------------------------------------------------------------------------
    def _insert(self, ids: np.ndarray, rows: np.ndarray, expires: float) -> None:
        """ids int64 [K] distinct, rows int64 [K, F_h]. Present ids (expired, or inserted by a
        concurrent get during our await) are overwritten in place; the rest take free slots."""
        slots = self._slots.lookup(ids).astype(np.int64)
        old = slots >= 0
        self._rows[slots[old]], self._expires[slots[old]] = rows[old], expires
        self._slots.touch(slots[old])
        ids, rows = ids[~old][:self.capacity], rows[~old][:self.capacity]  # more than Cap: the first Cap
        if ids.size == 0:
            return
        new = self._slots.allocate(ids)
        self._rows[new], self._expires[new] = rows, expires
