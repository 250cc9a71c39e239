"""Catalog rows in process memory in front of CatalogStore, each row kept at most `ttl_s`.

A score request needs the raw inherent features of its candidates and of its S newest behaviors:
~150 ids, which through Redis cost one HMGET per touched bucket and ~20 us of redis-py work per
reply. The hot ids repeat across requests, so they are served from here.

Symbols: N ids per get, Cap capacity (rows), F_h inherent raw features.

    rows     int64 [Cap, F_h]    one catalog row per slot
    index    IdIndex id -> slot  vectorized numpy hash map (no Python loop over ids)
    expires  float64 [Cap]       clock time after which the slot's row is read again
    last     int64 [Cap]         tick of each slot's last access (approximate LRU)

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
from cache.id_index import IdIndex
from cache.layout import check_ids

COUNTERS = ("hits", "misses", "expired", "evictions")


class CatalogRowCache:
    """get(ids) -> (raw int64 [N, F_h], found bool [N]), the CatalogStore.get contract."""

    def __init__(self, store: CatalogStore, capacity: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic, evict_fraction: float = 1 / 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        if not 0 < evict_fraction <= 1:
            raise ValueError(f"evict_fraction must be in (0, 1], got {evict_fraction}")
        self.store, self.capacity, self.ttl_s, self.clock = store, capacity, ttl_s, clock
        self.n_features = store.n_features
        self._evict_min = max(1, int(capacity * evict_fraction))
        self._rows = np.zeros((capacity, self.n_features), np.int64)  # [Cap, F_h]
        self._index = IdIndex(capacity)
        self._slot_key = np.full(capacity, -1, np.int64)  # [Cap] item id per slot, -1 = free
        self._expires = np.zeros(capacity, np.float64)  # [Cap]
        self._last = np.zeros(capacity, np.int64)  # [Cap]
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # stack of free slots; top = end
        self._n_free = capacity
        self._tick = 0
        self._stats = dict.fromkeys(COUNTERS, 0)

    async def get(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """item_ids int64 [N] -> (raw int64 [N, F_h], found bool [N]) in request order."""
        ids = check_ids(item_ids)
        self._tick += 1
        slots = self._index.lookup(ids)  # int32 [N], -1 = absent
        present = slots >= 0
        fresh = present.copy()
        fresh[present] = self._expires[slots[present]] > self.clock()
        out = np.zeros((ids.size, self.n_features), np.int64)  # [N, F_h]
        out[fresh] = self._rows[slots[fresh]]
        self._last[slots[fresh]] = self._tick
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
        slots = self._index.lookup(check_ids(item_ids))
        self._release(np.unique(slots[slots >= 0]).astype(np.int64))

    def clear(self) -> None:
        self._release(np.flatnonzero(self._slot_key >= 0))

    def stats(self) -> dict[str, int]:
        return {**self._stats, "size": self._index.size, "capacity": self.capacity}

    # ---- internals ----------------------------------------------------------------------------------
    def _insert(self, ids: np.ndarray, rows: np.ndarray, expires: float) -> None:
        """ids int64 [K] distinct, rows int64 [K, F_h]. Present ids (expired, or inserted by a
        concurrent get during our await) are overwritten in place; the rest take free slots."""
        slots = self._index.lookup(ids).astype(np.int64)
        old = slots >= 0
        self._rows[slots[old]], self._expires[slots[old]], self._last[slots[old]] = rows[old], expires, self._tick
        ids, rows = ids[~old][:self.capacity], rows[~old][:self.capacity]  # more than Cap: the first Cap
        k = ids.size
        if k == 0:
            return
        if k > self._n_free:
            self._evict(k - self._n_free)
        new = self._free[self._n_free - k:self._n_free].copy()
        self._n_free -= k
        self._rows[new], self._expires[new], self._last[new] = rows, expires, self._tick
        self._slot_key[new] = ids
        self._index.insert(ids, new.astype(np.int32))

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
