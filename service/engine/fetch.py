"""Redis I/O of one score request, on the event loop: behaviors, catalog rows, projections.

Round trips: (1) the user's behaviors: with the slot's user cache, one `read_since` script returning
only what was appended since the cached sequence (plus a full read when the history was rewritten
under it); without it, the newest L; then concurrently (2) catalog rows of the candidates that need
them and of the S newest behaviors not known yet, through the slot's catalog row cache, and (3) the
projections of the behaviors not cached yet, through the local device cache (Redis only for misses).
A warm user with hot candidates costs one round trip. Whether the cached sequence is still current is
the cache's own check (`UserSequenceCache.current`). Everything runs under one time budget, and a
store failure never fails the request, it degrades it (empty history, candidates scored from the
features the client sent, missing ones 0), mapped by kind (cache.errors):
  budget spent -> "redis_unavailable", the breaker left to the probe (the time may be our own busy loop);
  outage (unreachable) -> "redis_unavailable", and the breaker trips;
  refusal (Redis answered with an error) -> "redis_refused", breaker untouched (Redis is up).
Any other exception is a bug: it propagates (a logged 500, service.errors.BugBarrier), touching
neither the breaker nor readiness.
A sequence is cached only after a fetch that completed without a defaulted projection (which the
next request retries, as without the cache), so a failure never leaves a partial entry behind.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cache.errors import is_outage, is_refusal
from cache.local_cache import GatherResult
from cache.user_sequence_cache import UserSequence, extend, recent_window
from service.engine.request import ScoreInputs
from service.engine.slot import ModelSlot
from service.errors import field_error
from service.health import HealthMonitor

log = logging.getLogger(__name__)


@dataclass
class Fetched:
    inputs: ScoreInputs
    seq_item_ids: np.ndarray          # [m] int64, newest first (explain maps positions through it)
    seq_ts: np.ndarray                # [m] int64
    reasons: list[str] = field(default_factory=list)
    fetch_ms: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0


def _no_rows(slot: ModelSlot) -> torch.Tensor:
    """float16 [0, D] on the slot's device (from numpy: a torch factory call on the event loop costs ~20 us)."""
    return torch.from_numpy(np.zeros((0, slot.model.proj_dim), np.float16)).to(slot.device)


def _empty_sequence(slot: ModelSlot) -> UserSequence:
    J, F = len(slot.cross_names), len(slot.inherent_names)
    return UserSequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, J), np.float32), _no_rows(slot),
                        np.zeros((0, F), np.int64), np.zeros(0, bool), 0, b"", 0.0)


class Fetcher:
    def __init__(self, health: HealthMonitor, timeout_s: float):
        self.health = health
        self.timeout_s = timeout_s

    async def fetch(self, slot: ModelSlot, user_id: int, cand: np.ndarray, given: np.ndarray, now: int,
                    explain: bool, deadline: float) -> Fetched:
        """cand [C, F_h] int64 raw values the client sent (item_id always), given [C, F_h] bool which
        of them were sent. Raises a 422 for a candidate unknown to the catalog that came without features."""
        t0 = time.perf_counter()
        reasons: list[str] = []
        need_cat = ~given.all(axis=1)  # [C] candidates that need catalog rows
        seq: UserSequence | None = None
        hits = misses = 0
        budget = min(self.timeout_s, deadline - time.monotonic())
        if not self.health.redis_ok or budget <= 0:
            reasons.append("redis_unavailable")
            cand = cand.copy()  # no catalog: defaults (0) stay for the features the client did not send
        else:
            try:
                async with asyncio.timeout(budget):
                    seq, cat_raw, found, gathered = await self._read(slot, user_id, cand[need_cat, 0])
            except Exception as e:
                reasons.append(self._degrade(user_id, e))  # re-raises what is not the store's failure
                cand = cand.copy()
            else:
                if seq.total == 0:
                    reasons.append("unknown_user")
                cand = self._merge_candidates(cand, given, need_cat, cat_raw, found, reasons)
                if not seq.recent_found.all():
                    reasons.append("catalog_miss")  # a recent behavior's item has no catalog row: id only
                hits, misses = int(gathered.hits), int(gathered.misses)
                if gathered.defaulted:
                    reasons.append("projection_default")
        if seq is None:  # degraded: an empty history
            seq = _empty_sequence(slot)
        inputs = ScoreInputs(slot=slot, seq_proj=seq.seq_proj, seq_cross=seq.cross, seq_ts=seq.ts, recent=seq.recent,
                             cand=cand, now=now, hist_len=seq.total, explain=explain)
        return Fetched(inputs, seq.item_id, seq.ts, reasons, (time.perf_counter() - t0) * 1e3, hits, misses)

    async def prefetch(self, slot: ModelSlot, user_id: int) -> None:
        """Read the user's sequence into the slot's caches (user sequence, projections, catalog rows of
        the recent behaviors), as a request would, within the Redis budget: a version about to be
        switched in starts warm for the users being served. Store failures propagate."""
        async with asyncio.timeout(self.timeout_s):
            await self._read(slot, user_id, np.zeros(0, np.int64))

    def _degrade(self, user_id: int, e: Exception) -> str:
        """The degraded reason of a failed fetch, by kind; re-raises a bug."""
        if isinstance(e, TimeoutError):  # our budget: Redis slow, or our own event loop busy. The probe decides.
            log.warning("redis fetch for user %d ran out of its %.0f ms budget", user_id, self.timeout_s * 1e3)
            return "redis_unavailable"
        if is_outage(e):
            log.warning("redis fetch for user %d failed, store unreachable: %r", user_id, e)
            self.health.note_redis_failure(e)
            return "redis_unavailable"
        if is_refusal(e):
            log.warning("redis refused the fetch for user %d: %r", user_id, e)
            return "redis_refused"
        raise e

    async def _read(self, slot: ModelSlot, user_id: int, cand_ids: np.ndarray
                    ) -> tuple[UserSequence, np.ndarray, np.ndarray, GatherResult]:
        """-> (the user's sequence, catalog rows int64 [n, F_h] and found bool [n] of cand_ids [n],
        the projection gather of the behaviors new to the sequence). Raises on a store failure."""
        cache, L = slot.user_cache, slot.seq_len
        base: UserSequence | None = None
        if cache is None:
            new, newest = (await slot.behaviors.read_newest([user_id], L))[0], b""
        else:
            epoch = cache.epoch  # an invalidation while we read: the entry built below is not kept
            base, new, newest = await cache.current(user_id, slot.behaviors, L)
        # rows of the S newest: the base's rows that stay in the window, the rest read with the candidates
        rows, rows_found, need = recent_window(base, new.item_id, slot.short_len, L, len(slot.inherent_names))
        n = cand_ids.size
        (cat_raw, found), gathered = await self._catalog_and_projections(
            slot, np.concatenate([cand_ids, rows[need, 0]]), new.item_id)
        got = found[n:]  # [q] of the `need` positions
        rows[need[got]] = cat_raw[n:][got]
        rows_found[need] = got
        seq = extend(base, new, gathered.vecs, rows, rows_found, newest, L, cache.clock() if cache else 0.0)
        if cache is not None and seq.total > 0 and not gathered.defaulted:
            cache.put(user_id, seq, epoch)
        return seq, cat_raw[:n], found[:n], gathered

    @staticmethod
    async def _catalog_and_projections(slot: ModelSlot, cat_ids: np.ndarray, proj_ids: np.ndarray
                                       ) -> tuple[tuple[np.ndarray, np.ndarray], GatherResult]:
        """Catalog rows of cat_ids [n] and projections of proj_ids [d], concurrently; an empty side
        costs nothing (a warm user's request often needs only one of them, or neither)."""
        if cat_ids.size and proj_ids.size:
            return await asyncio.gather(slot.catalog_rows.get(cat_ids), slot.local_cache.gather(proj_ids))
        cat = (await slot.catalog_rows.get(cat_ids) if cat_ids.size
               else (np.zeros((0, len(slot.inherent_names)), np.int64), np.zeros(0, bool)))
        if proj_ids.size:
            return cat, await slot.local_cache.gather(proj_ids)
        return cat, GatherResult(_no_rows(slot), 0, 0, 0, 0, 0)

    @staticmethod
    def _merge_candidates(cand: np.ndarray, given: np.ndarray, need_cat: np.ndarray, cat_raw: np.ndarray,
                          found: np.ndarray, reasons: list[str]) -> np.ndarray:
        """Catalog rows under the client's values (the client's features win). Vectorized: no Python
        work per candidate unless one is missing from the catalog."""
        out = cand.copy()
        rows = np.flatnonzero(need_cat)  # [n] candidates that asked the catalog, cat_raw/found [n] aligned
        hit = rows[found]
        out[hit] = np.where(given[hit], cand[hit], cat_raw[found])
        for r in rows[~found]:
            if not given[r, 1:].any():
                raise field_error(("body", "candidates", int(r), "item_id"),
                                  f"unknown item {int(cand[r, 0])}: not in the catalog and no features given",
                                  int(cand[r, 0]))
        if not found.all() and "candidate_features_defaulted" not in reasons:
            reasons.append("candidate_features_defaulted")
        return out
