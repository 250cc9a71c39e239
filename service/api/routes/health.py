from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import CtxDep
from service.api.schemas import ReadyResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, bool]:
    """The process and its event loop answer."""
    return {"live": True}


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(ctx: CtxDep) -> JSONResponse:
    """Ready = warm: model loaded, projected and warmed; Redis and the device answer."""
    reasons = ctx.not_ready_reasons()
    slot = ctx.engine.active
    body = ReadyResponse(ready=not reasons, reasons=reasons, model_version=slot.version if slot else None)
    return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)
