from fastapi import APIRouter
from fastapi.responses import Response

from service import scoring
from service.api.deps import CtxDep, DeadlineDep
from service.api.responses import BODY_ERRORS
from service.api.schemas import ScoreRequest, ScoreResponse

router = APIRouter(prefix="/v1", tags=["score"])

_ERRORS = {**BODY_ERRORS, 429: {"description": "Queue full; see Retry-After"},
           503: {"description": "No model serving"}, 504: {"description": "Deadline passed"}}


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS)
async def score(body: ScoreRequest, ctx: CtxDep, deadline: DeadlineDep) -> Response:
    """One CTR per candidate for the user, with the model version that produced them.

    Unknown users are scored with an empty history (`degraded`, reason `unknown_user`); when Redis
    is unreachable the answer comes from what the process holds (`redis_unavailable`).
    """
    answer = await scoring.score(ctx, body, deadline)
    # serialized here, once, without the unset explain: FastAPI would dump the model, validate the dump
    # against response_model and encode that again (response_model stays for the OpenAPI document)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
