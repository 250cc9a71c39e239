"""Bounded staleness of what a running scorer caches about items: projections (local device cache, the
per-user sequences that hold gathered projections) and catalog rows.

An incremental projector run rewrites some items' projections of a version in place and then publishes
them on the version's change feed (cache.projection_store: `P:v:V:gen` {gen, floor} and
`P:v:V:changed` item -> generation). Every `interval_s` this loop reads each held slot's (gen, floor),
one HMGET per slot, and when it moved past the generation the slot was built at (or last saw):
  floor above it -> drop everything the slot caches (a full re-projection, or a feed trimmed past it);
  else           -> read the ids of the generations in between and drop those ids from the local
                    projection cache, the catalog row cache and every user sequence that holds them.
The next request reads them again from Redis. So an item re-projected by an incremental run is
served with its new projection at most `interval_s` (plus the duration of a request already
fetching) after the run finished; a changed catalog row is re-read within the same bound when the
projector re-projects it (what catalog updates do), else within catalog_cache_ttl_s. Held slots: the
active one and the previous one (kept warm for rollback).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.engine.slot import ModelSlot
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def check_slot(slot: ModelSlot) -> int:
    """Apply the version's change feed to the slot's caches; returns how many item ids were dropped
    (-1: everything). Redis errors propagate (the loop retries)."""
    store = slot.meta["projections"]
    known = slot.meta.get("generation", 0)
    gen, floor = await store.generation()
    if gen == known:
        return 0
    caches = [c for c in (slot.local_cache, slot.user_cache, slot.catalog_cache) if c is not None]
    if gen < known or floor > known:
        for c in caches:
            c.clear()
        dropped = -1
    else:
        ids = await store.changed_since(known, gen)
        slot.local_cache.invalidate(ids)
        if slot.catalog_cache is not None:
            slot.catalog_cache.invalidate(ids)
        if slot.user_cache is not None:
            slot.user_cache.invalidate_items(ids)
        dropped = int(ids.size)
    slot.meta["generation"] = gen
    log.info("model %s: projections changed (generation %d -> %d): dropped %s cached items", slot.version, known,
             gen, "all" if dropped < 0 else dropped)
    return dropped


class ProjectionFreshness:
    def __init__(self, slots: Callable[[], list[ModelSlot]], interval_s: float) -> None:
        self.slots = slots
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def check_once(self) -> None:
        for slot in self.slots():
            await check_slot(slot)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception as e:  # noqa: BLE001 - Redis down or slow: the next poll tries again
                log.warning("projection freshness check failed: %r", e)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="twin-freshness")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
