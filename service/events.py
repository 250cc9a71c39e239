"""The events use case: validate against the serving model's cross features, store, then acknowledge."""
from __future__ import annotations

import asyncio
import logging

import numpy as np

from cache.errors import is_outage, is_refusal
from service.api.schemas import EventsRequest, EventsResponse
from service.context import ServiceContext
from service.errors import NotReady, field_error

log = logging.getLogger(__name__)


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
    # Acknowledge only what Redis confirmed. Every value was validated above and by the request schema,
    # so a failure here is the store's (an outage trips the breaker, a refusal does not) or a bug (500).
    try:
        new = await asyncio.wait_for(slot.behaviors.append(events), ctx.settings.events_timeout_ms / 1e3)
    except TimeoutError as e:  # our budget ran out; the script may still have run. The probe judges Redis.
        log.warning("storing %d events timed out after %d ms", len(events), ctx.settings.events_timeout_ms)
        raise NotReady("events not acknowledged: the behavior store did not answer in time, they may or may not "
                       "be stored; retrying is safe (deduplicated by event_id)", reason="redis_timeout") from e
    except Exception as e:
        if is_outage(e):
            log.warning("storing %d events failed, store unreachable: %r", len(events), e)
            ctx.health.note_redis_failure()
            raise NotReady("events not stored: the behavior store is unreachable; retry",
                           reason="redis_unavailable") from e
        if is_refusal(e):
            log.warning("the behavior store refused %d events: %r", len(events), e)
            raise NotReady(f"events not stored: the behavior store refused the write ({e}); retry later",
                           reason="redis_refused") from e
        raise
    return EventsResponse(accepted=len(events), new=int(new))
