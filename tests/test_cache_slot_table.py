"""SlotTable: allocation, bulk LRU eviction, forget and clear keep index, keys and free list in step."""
from __future__ import annotations

import numpy as np
import pytest

from cache.slot_table import SlotTable


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, np.int64)


def test_allocate_then_lookup_and_bulk_lru_eviction():
    t = SlotTable(8, evict_fraction=0.25)  # evicts at least 2 at a time
    first = t.allocate(ids(10, 11, 12, 13, 14, 15, 16, 17))
    assert sorted(first.tolist()) == list(range(8)) and t.size == 8
    t.tick += 1
    t.touch(t.lookup(ids(10, 11, 12, 13, 14, 15)).astype(np.int64))  # 16 and 17 are now the oldest
    new = t.allocate(ids(99))  # full: evicts the 2 least recently used, uses one of their slots
    assert t.evictions == 2 and t.size == 7
    assert (t.lookup(ids(16, 17)) == -1).all() and t.lookup(ids(99))[0] == new[0]
    assert set(t.slot_key[t.slot_key >= 0].tolist()) == {10, 11, 12, 13, 14, 15, 99}


def test_forget_and_clear_free_slots_for_reuse():
    t = SlotTable(4)
    t.allocate(ids(1, 2, 3, 4))
    t.forget(ids(2, 7, 2))  # absent and repeated ids are ignored
    assert t.size == 3 and t.lookup(ids(2))[0] == -1
    t.allocate(ids(5))  # the freed slot, no eviction
    assert t.evictions == 0
    t.clear()
    assert t.size == 0 and (t.slot_key == -1).all()
    assert sorted(t.allocate(ids(6, 7, 8, 9)).tolist()) == [0, 1, 2, 3]


def test_refuses_more_ids_than_slots_and_bad_arguments():
    with pytest.raises(ValueError, match="cannot place"):
        SlotTable(2).allocate(ids(1, 2, 3))
    with pytest.raises(ValueError, match="capacity"):
        SlotTable(0)
    with pytest.raises(ValueError, match="evict_fraction"):
        SlotTable(4, evict_fraction=0)
