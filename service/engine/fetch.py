"""Redis I/O of one score request, on the event loop: behaviors, catalog rows, projections.

Round trips: (1) the user's newest L behaviors; then concurrently (2) catalog rows of the candidates
that need them and of the S newest behaviors, and (3) the behaviors' projections through the local
device cache (which goes to Redis only for misses). Everything runs under one time budget; a Redis
failure or timeout never fails the request, it degrades it:
  behaviors or projections unreachable -> empty history, reason "redis_unavailable";
  catalog unreachable -> candidates scored from the features the client sent (missing ones 0).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

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


def _empty_history(slot: ModelSlot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(slot.cross_names)), np.float32)


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
        S = slot.short_len
        need_cat = ~given.all(axis=1)  # [C] candidates that need catalog rows
        item_ids, ts, cross = _empty_history(slot)
        hist_len, seq_proj = 0, torch.zeros(0, slot.model.proj_dim, dtype=torch.float16, device=slot.device)
        recent = np.zeros((0, cand.shape[1]), np.int64)
        hits = misses = 0
        budget = min(self.timeout_s, deadline - time.monotonic())
        if not self.health.redis_ok or budget <= 0:
            reasons.append("redis_unavailable")
            cand = cand.copy()  # no catalog: defaults (0) stay for the features the client did not send
        else:
            try:
                async with asyncio.timeout(budget):
                    block = (await slot.behaviors.read_newest([user_id], slot.seq_len))[0]
                    item_ids, ts, cross, hist_len = block.item_id, block.ts, block.cross, int(block.total)
                    if hist_len == 0:
                        reasons.append("unknown_user")
                    cat_ids = np.concatenate([cand[need_cat, 0], item_ids[:S]])
                    (cat_raw, found), gathered = await asyncio.gather(
                        slot.catalog.get(cat_ids), slot.local_cache.gather(item_ids))
            except Exception as e:  # noqa: BLE001 - any store failure degrades, never fails, the request
                log.warning("redis fetch for user %d failed: %r", user_id, e)
                if not isinstance(e, TimeoutError):  # a blown budget may be our own busy loop: the probe decides
                    self.health.note_redis_failure()
                reasons.append("redis_unavailable")
                item_ids, ts, cross = _empty_history(slot)
                hist_len = 0
                if "unknown_user" in reasons:
                    reasons.remove("unknown_user")
                cand = cand.copy()
            else:
                cand = self._merge_candidates(cand, given, need_cat, cat_raw[:int(need_cat.sum())],
                                              found[:int(need_cat.sum())], reasons)
                recent = self._recent_rows(item_ids[:S], cat_raw[int(need_cat.sum()):],
                                           found[int(need_cat.sum()):], cand.shape[1], reasons)
                seq_proj = gathered.vecs
                hits, misses = int(gathered.hits), int(gathered.misses)
                if gathered.defaulted:
                    reasons.append("projection_default")
        inputs = ScoreInputs(slot=slot, seq_proj=seq_proj, seq_cross=np.asarray(cross, np.float32),
                             seq_ts=np.asarray(ts, np.int64), recent=recent, cand=cand, now=now,
                             hist_len=hist_len, explain=explain)
        return Fetched(inputs, np.asarray(item_ids, np.int64), np.asarray(ts, np.int64), reasons,
                       (time.perf_counter() - t0) * 1e3, hits, misses)

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

    @staticmethod
    def _recent_rows(ids: np.ndarray, cat_raw: np.ndarray, found: np.ndarray, n_feat: int,
                     reasons: list[str]) -> np.ndarray:
        """Raw rows of the S newest behaviors; an item missing from the catalog keeps only its id."""
        rows = np.zeros((len(ids), n_feat), np.int64)
        rows[:, 0] = ids
        if len(ids):
            rows[found] = cat_raw[found]
            if not found.all():
                reasons.append("catalog_miss")
        return rows
