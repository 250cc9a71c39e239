"""The events use case: validate against the serving model's cross features and the catalog, store, then
acknowledge."""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
from fastapi.exceptions import RequestValidationError

from cache.errors import is_outage, is_refusal
from service.api.schemas import EventsRequest, EventsResponse
from service.context import ServiceContext
from service.errors import NotReady, field_error
from service.tasks import bounded

log = logging.getLogger(__name__)
T = TypeVar("T")


async def append_events(ctx: ServiceContext, body: EventsRequest) -> EventsResponse:
    from cache.behavior_store import Event

    slot = ctx.engine.active
    if slot is None:
        raise NotReady("no model is serving: the cross feature schema is unknown", reason="no_active_model")
    limit = ctx.settings.max_events
    if len(body.events) > limit:
        raise field_error(("body", "events"), f"List should have at most {limit} items after validation, "
                          f"not {len(body.events)}", len(body.events), kind="too_long")
    names = slot.cross_names
    index = {n: j for j, n in enumerate(names)}
    events = []
    for i, e in enumerate(body.events):
        cross = np.zeros(len(names), np.float32)
        for name, value in e.cross.items():
            j = index.get(name)
            if j is None:
                raise field_error(("body", "events", i, "cross", name),
                                  f"unknown cross feature {name!r} for model {slot.version}; known: {names}", name)
            cross[j] = value
        events.append(Event(event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, ts=e.ts, cross=cross))
    # Items must be in the catalog (read through the row cache, so a hot item costs no round trip): an
    # event for an unknown item would be stored and then degrade every later score of that user
    # (catalog_miss / projection_default). Refused before anything is written, naming each event.
    budget = ctx.settings.events_timeout_ms / 1e3
    t0 = time.monotonic()
    item_ids = np.fromiter((e.item_id for e in events), np.int64, len(events))
    _, known = await _store_call(ctx, slot.catalog_rows.get(item_ids), budget, len(events), written=False)
    if not known.all():
        raise RequestValidationError([
            {"type": "value_error", "loc": ("body", "events", int(i), "item_id"), "input": int(item_ids[i]),
             "msg": f"unknown item {int(item_ids[i])}: not in the catalog"} for i in np.flatnonzero(~known)])
    # Acknowledge only what Redis confirmed. Every value was validated above and by the request schema,
    # so a failure here is the store's (an outage trips the breaker, a refusal does not) or a bug (500).
    new = await _store_call(ctx, slot.behaviors.append(events), budget - (time.monotonic() - t0), len(events),
                            written=True)
    return EventsResponse(accepted=len(events), new=int(new))


async def _store_call(ctx: ServiceContext, call: Awaitable[T], budget_s: float, n: int, written: bool) -> T:
    """Await a store call within budget_s, mapping its failures by kind (cache.errors): an outage trips
    the breaker, a refusal does not (Redis is up), a timeout leaves the judgement to the probe (and,
    once the write was sent, cannot say whether it ran). Anything else is a bug: it propagates (500)."""
    what = "stored" if written else "checked against the catalog"
    try:
        return await bounded(call, budget_s)
    except TimeoutError as e:
        log.warning("%d events: the store did not answer in time (%s)", n, what)
        if written:  # the script was sent: it may have run after our budget ran out
            raise NotReady("events not acknowledged: the behavior store did not answer in time, they may or may "
                           "not be stored; retrying is safe (deduplicated by event_id)", reason="redis_timeout") from e
        raise NotReady("events not stored: the catalog check did not answer in time; retry",
                       reason="redis_timeout") from e
    except Exception as e:
        if is_outage(e):
            log.warning("%d events not %s, store unreachable: %r", n, what, e)
            ctx.health.note_redis_failure(e)
            raise NotReady("events not stored: the behavior store is unreachable; retry",
                           reason="redis_unavailable") from e
        if is_refusal(e):
            log.warning("the store refused %d events (%s): %r", n, what, e)
            raise NotReady(f"events not stored: the store refused the request ({e}); retry later",
                           reason="redis_refused") from e
        raise
