"""The slot bookkeeping shared by the in-process caches: ids -> slots of a fixed-capacity array,
approximate LRU by access tick, eviction in bulk.

Symbols: N ids, Cap capacity.

    index     IdIndex id -> slot   vectorized numpy hash map (no Python loop over ids)
    slot_key  int64 [Cap]          id held by each slot, -1 = free
    last      int64 [Cap]          tick of each slot's last access
    free      int64 [Cap]          stack of free slots (top = end)

The caller owns the payload arrays indexed by slot (rows, vectors, expiry times) and its locking.
Eviction frees at least Cap * evict_fraction slots at once, so its argpartition over the used slots
is paid once per many misses, not per miss.
"""
from __future__ import annotations

import numpy as np

from cache.id_index import IdIndex


class SlotTable:
    def __init__(self, capacity: int, evict_fraction: float = 1 / 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0 < evict_fraction <= 1:
            raise ValueError(f"evict_fraction must be in (0, 1], got {evict_fraction}")
        self.capacity = capacity
        self.evict_min = max(1, int(capacity * evict_fraction))
        self.index = IdIndex(capacity)
        self.slot_key = np.full(capacity, -1, np.int64)  # [Cap]
        self.last = np.zeros(capacity, np.int64)  # [Cap]
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # [Cap] stack; top = end
        self._n_free = capacity
        self.tick = 0
        self.evictions = 0

    @property
    def size(self) -> int:
        return self.index.size

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 [N] -> slots int32 [N], -1 where absent."""
        return self.index.lookup(ids)

    def touch(self, slots: np.ndarray) -> None:
        """Stamp slots with the current tick (they were just used)."""
        self.last[slots] = self.tick

    def allocate(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 [K] distinct, absent, K <= Cap -> their new slots int64 [K] (stamped with the
        current tick), evicting least recently used slots in bulk when too few are free."""
        k = ids.size
        if k > self.capacity:
            raise ValueError(f"cannot place {k} ids in {self.capacity} slots")
        if k > self._n_free:
            self._evict(k - self._n_free)
        slots = self._free[self._n_free - k:self._n_free].copy()
        self._n_free -= k
        self.slot_key[slots] = ids
        self.last[slots] = self.tick
        self.index.insert(ids, slots.astype(np.int32))
        return slots

    def release(self, slots: np.ndarray) -> None:
        """Free slots int64 [K] (distinct, in use)."""
        if slots.size == 0:
            return
        self.index.delete(self.slot_key[slots])
        self.slot_key[slots] = -1
        self._free[self._n_free:self._n_free + slots.size] = slots
        self._n_free += slots.size

    def forget(self, ids: np.ndarray) -> None:
        """Free the slots of those ids that are present."""
        slots = self.index.lookup(ids)
        self.release(np.unique(slots[slots >= 0]).astype(np.int64))

    def clear(self) -> None:
        """Free every slot; the index is rebuilt empty (no deleted markers left behind to probe)."""
        self.index.clear()
        self.slot_key.fill(-1)
        self._free[:] = np.arange(self.capacity - 1, -1, -1)
        self._n_free = self.capacity

    def _evict(self, need: int) -> None:
        used = np.flatnonzero(self.slot_key >= 0)
        k = min(max(need, self.evict_min), used.size)
        victims = used[np.argpartition(self.last[used], k - 1)[:k]] if k < used.size else used
        self.release(victims)
        self.evictions += int(victims.size)
