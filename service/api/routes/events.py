from fastapi import APIRouter

from service import events
from service.api.deps import CtxDep
from service.api.responses import BODY_ERRORS
from service.api.schemas import EventsRequest, EventsResponse

router = APIRouter(prefix="/v1", tags=["events"])


@router.post("/events", response_model=EventsResponse,
             responses={**BODY_ERRORS,
                        503: {"description": "Not stored, or (reason redis_timeout) maybe stored: retry after "
                                             "Retry-After, replays are deduplicated by event_id"}})
async def append(body: EventsRequest, ctx: CtxDep) -> EventsResponse:
    """Append behaviors to the users' logs. Answers only after Redis stored them; idempotent by event_id."""
    return await events.append_events(ctx, body)
