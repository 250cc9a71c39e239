"""Per-user cache of what a score request's fetch builds from the user's history, for ONE model version.

Symbols: m behaviors held (<= L, the window a request reads), D projection width, J_s stored cross
values, S short-term window, F_h inherent raw features, d behaviors appended since an entry was read.

An entry (`UserSequence`) is the newest-first sequence the uncached fetch would build: item ids [m],
ts [m], cross [m, J_s], the gathered projections seq_proj [m, D] float16 on the model's device, the
raw catalog rows of the S newest behaviors, and `total` = the user's behaviors-ever count it is
current for. Its freshness is checked on every use by `current`, in one Redis round trip
(`BehaviorStore.read_since(user, total, L)`): d new records -> `extend` puts them in front and cuts to
L (only the d new items are gathered and only the new S-window rows read); a count that went down,
d >= L, or a record just older than the delta that differs from the entry's newest (a rewritten
history) -> a full read. Items re-projected in place under the same version are dropped with the
entries that hold them (`invalidate_items`, driven by the projector's change feed, see
service/freshness.py); what neither can see (a rewrite that kept the newest record) is bounded by
`max_age_s`: past it an entry is read in full again (a delta keeps its entry's birth time, so a busy
user is re-read too). An entry built from reads that started before an invalidation is not stored
(`epoch`), so a request in flight cannot put back what was just dropped.

Bounded by bytes (host arrays + device tensor) with LRU eviction. Entries are built for one model
version (projections are per version), so the cache lives in the model slot and a hot swap starts
empty. Used from the event loop only (no lock): every method runs between awaits. Entries are
shared with in-flight requests, so nothing here or downstream writes into their arrays.

Worked example: L=4, entry ids [9, 8, 7, 6] (newest first), total 10; two events (ids 11, 12) arrive;
read_since(u, 10, 4) -> delta [12, 11] with anchor = the record of 9 == entry.newest -> extend ->
ids [12, 11, 9, 8], total 12; only items 12 and 11 are gathered.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from cache.behavior_store import BehaviorBlock, BehaviorStore

ENTRY_OVERHEAD_BYTES = 1024  # Python objects, dict slot, array headers: keeps tiny entries honest
# What a lookup and the caller's freshness check found: entry current (hits), d new records (deltas),
# no entry (misses), too old (expired), anchor mismatch (rewritten), count went down or >= L new (resets).
OUTCOMES = ("hits", "deltas", "misses", "expired", "rewritten", "resets")


@dataclass(frozen=True, eq=False)
class UserSequence:
    item_id: np.ndarray        # int64 [m] newest first
    ts: np.ndarray             # int64 [m]
    cross: np.ndarray          # float32 [m, J_s]
    seq_proj: torch.Tensor     # float16 [m, D] on the model's device
    recent: np.ndarray         # int64 [min(S, m), F_h] catalog rows of the newest (id only where missing)
    recent_found: np.ndarray   # bool [min(S, m)]
    total: int                 # the user's behaviors-ever count these arrays are current for
    newest: bytes              # packed newest record (b"" when m == 0): read_since's anchor check
    born: float                # clock time of the full read this entry descends from
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        arrays = (self.item_id, self.ts, self.cross, self.recent, self.recent_found)
        size = sum(a.nbytes for a in arrays) + self.seq_proj.numel() * self.seq_proj.element_size()
        object.__setattr__(self, "nbytes", size + len(self.newest) + ENTRY_OVERHEAD_BYTES)

    def __len__(self) -> int:
        return int(self.item_id.size)


def _kept(base: UserSequence, d: int, L: int) -> int:
    """How many of base's newest behaviors stay behind d new ones in a window of L."""
    return max(0, min(len(base), L - d))


def recent_window(base: UserSequence | None, new_ids: np.ndarray, S: int, L: int, n_features: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The S-window of the sequence `base` extended by new_ids [d] (newest first; base None = a full
    read, new_ids is then the whole sequence) -> (rows int64 [s, F_h] with the rows base already holds
    and the id elsewhere, found bool [s], need int [q] positions whose rows must be read)."""
    d = new_ids.size
    if base is None:
        ids = new_ids[:S]
        kept = 0
    else:
        kept = max(0, min(S - d, _kept(base, d, L)))  # base rows still inside the S window
        ids = np.concatenate([new_ids[:S], base.item_id[:kept]])
    rows = np.zeros((ids.size, n_features), np.int64)  # [s, F_h]
    rows[:, 0] = ids
    found = np.zeros(ids.size, bool)
    if kept:
        rows[ids.size - kept:] = base.recent[:kept]
        found[ids.size - kept:] = base.recent_found[:kept]
    need = np.flatnonzero(~found)  # the new ones, and base's misses (the catalog may have them now)
    return rows, found, need


def extend(base: UserSequence | None, new: BehaviorBlock, new_proj: torch.Tensor, recent: np.ndarray,
           recent_found: np.ndarray, newest: bytes, L: int, now: float) -> UserSequence:
    """base + the d records appended since (new, newest first, new_proj [d, D]), cut to L; base None:
    `new` is the whole window, read in full now. recent/recent_found from recent_window, completed."""
    if base is None:
        return UserSequence(new.item_id, new.ts, new.cross, new_proj, recent, recent_found, int(new.total),
                            newest, now)
    keep = _kept(base, len(new), L)
    if len(new) == 0:
        item_id, ts, cross, proj = base.item_id, base.ts, base.cross, base.seq_proj
    else:
        item_id = np.concatenate([new.item_id, base.item_id[:keep]])   # [d + keep]
        ts = np.concatenate([new.ts, base.ts[:keep]])
        cross = np.concatenate([new.cross, base.cross[:keep]])          # [d + keep, J_s]
        proj = _cat_rows(new_proj, base.seq_proj[:keep])                # [d + keep, D] on the device
    return UserSequence(item_id, ts, cross, proj, recent, recent_found, int(new.total), newest, base.born)


def _cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a; b] along rows. On the CPU through numpy: a single-threaded memcpy, where torch.cat wakes
    torch's intra-op pool from the event loop thread (measured 0.1 -> 0.7 ms per W1 sequence on a
    busy 2-core host)."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.concatenate([a.numpy(), b.numpy()]))
    return torch.cat([a, b])


class UserSequenceCache:
    """LRU of UserSequence by user id, bounded by `max_bytes`, entries older than `max_age_s` dropped
    on lookup. `count(outcome)` records what the caller's freshness check found (see OUTCOMES)."""

    def __init__(self, max_bytes: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_bytes, self.max_age_s, self.clock = max_bytes, max_age_s, clock
        self._entries: OrderedDict[int, UserSequence] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._stats = dict.fromkeys((*OUTCOMES, "evictions", "too_large", "invalidated"), 0)
        self.epoch = 0  # bumped by every invalidation: puts of entries read before it are dropped

    async def current(self, user_id: int, behaviors: BehaviorStore, L: int
                      ) -> tuple[UserSequence | None, BehaviorBlock, bytes]:
        """The freshness check, one read_since round trip (two after a rewrite) -> (base, new, newest):
        base = the user's entry when it is still a prefix of the log (None: rebuild), new = the
        records to put in front of it (the whole window when base is None), newest = the log's
        newest packed record (the next check's anchor). Counts the outcome. Redis errors propagate."""
        base = self.lookup(user_id)
        since = await behaviors.read_since(user_id, base.total if base is not None else -1, L)
        if base is not None and (since.full or since.anchor != base.newest):
            self.count("resets" if since.full else "rewritten")
            base = None
            if not since.full:  # rewritten under the same or a larger count: read it all again
                since = await behaviors.read_since(user_id, -1, L)
        elif base is not None:
            self.count("deltas" if len(since.block) else "hits")
        return base, since.block, since.newest

    def lookup(self, user_id: int) -> UserSequence | None:
        """The user's entry if it is younger than max_age_s (counts a miss or an expiry otherwise)."""
        entry = self._entries.get(user_id)
        if entry is None:
            self._stats["misses"] += 1
            return None
        if self.clock() - entry.born > self.max_age_s:
            self._drop(user_id)
            self._stats["expired"] += 1
            return None
        self._entries.move_to_end(user_id)
        return entry

    def put(self, user_id: int, entry: UserSequence, epoch: int | None = None) -> None:
        """Store (or replace) the user's entry, evicting least recently used ones past max_bytes.
        An entry larger than the whole budget is not stored, nor one whose reads began at an `epoch`
        an invalidation has ended since."""
        if epoch is not None and epoch != self.epoch:
            return
        self._drop(user_id)
        if entry.nbytes > self.max_bytes:
            self._stats["too_large"] += 1
            return
        self._entries[user_id] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self._stats["evictions"] += 1

    def recent_users(self, n: int) -> list[int]:
        """The n users looked up most recently, most recent first."""
        return [u for u, _ in zip(reversed(self._entries), range(n))]

    def count(self, outcome: str) -> None:
        self._stats[outcome] += 1

    def invalidate(self, user_id: int) -> None:
        self._drop(user_id)
        self.epoch += 1

    def invalidate_items(self, item_ids: np.ndarray) -> int:
        """Drop every entry that holds one of item_ids [n] (re-projected or re-cataloged items: their
        rows in seq_proj / recent are stale). O(behaviors held); returns the entries dropped."""
        self.epoch += 1
        changed = np.unique(np.asarray(item_ids, np.int64))
        if changed.size == 0:
            return 0
        doomed = [u for u, e in self._entries.items() if np.isin(e.item_id, changed, assume_unique=False).any()]
        for u in doomed:
            self._drop(u)
        self._stats["invalidated"] += len(doomed)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self.epoch += 1

    def stats(self) -> dict[str, int]:
        return {**self._stats, "entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes}

    def _drop(self, user_id: int) -> None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            self._bytes -= entry.nbytes
