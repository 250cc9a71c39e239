"""The events use case: validate against the serving model's cross features, store, then acknowledge."""
from __future__ import annotations

import asyncio
import logging

import numpy as np

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
    try:  # acknowledge only what Redis confirmed; a replay after a timeout is deduplicated by event_id
        new = await asyncio.wait_for(slot.behaviors.append(events), ctx.settings.events_timeout_ms / 1e3)
    except Exception as e:  # noqa: BLE001 - any failure: nothing is acknowledged
        log.warning("storing %d events failed: %r", len(events), e)
        ctx.health.note_redis_failure()
        raise NotReady("events not stored: the behavior store is unreachable; retry", reason="redis_unavailable") from e
    return EventsResponse(accepted=len(events), new=int(new))
