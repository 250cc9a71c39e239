from fastapi import APIRouter

from service import events
from service.api.deps import CtxDep
from service.api.schemas import EventsRequest, EventsResponse

router = APIRouter(prefix="/v1", tags=["events"])


@router.post("/events", response_model=EventsResponse,
             responses={413: {"description": "Body over max_body_bytes"},
                        503: {"description": "Not stored (Redis unreachable); retry after Retry-After"}})
async def append(body: EventsRequest, ctx: CtxDep) -> EventsResponse:
    """Append behaviors to the users' logs. Answers only after Redis stored them; idempotent by event_id."""
    return await events.append_events(ctx, body)
