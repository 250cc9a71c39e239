import asyncio
from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import AdminDep, CtxDep
from service.api.schemas import ActiveResponse, BrokenVersion, ModelInfo, ModelsResponse

router = APIRouter(prefix="/v1/models", tags=["models"])

_ADMIN = {401: {"description": "No Bearer token"}, 403: {"description": "Wrong token"},
          404: {"description": "Unknown version"}, 409: {"description": "Refused; the active model stays"}}


@router.get("", response_model=ModelsResponse)
async def list_models(ctx: CtxDep) -> ModelsResponse:
    manifests, broken = await asyncio.to_thread(ctx.registry.scan)
    active = await asyncio.to_thread(ctx.registry.active)
    slot = ctx.engine.active
    root = f"{ctx.registry.root}/"  # the server's paths stay out of the answer
    return ModelsResponse(
        broken=[BrokenVersion(version=name, reason=reason.replace(root, "")) for name, reason in broken],
        active=active, serving=slot.version if slot else None,
        features=slot.inherent_names[1:] if slot else [], cross=slot.cross_names if slot else [],
        versions=[ModelInfo(version=m.version, created_at=m.created_at, metrics=m.metrics, parent=m.parent)
                  for m in manifests],
    )


@router.post("/rollback", response_model=ActiveResponse, responses=_ADMIN)
async def rollback(ctx: CtxDep, _: AdminDep) -> ActiveResponse:
    """Switch back to the previously active version (kept warm, so this is instant)."""
    return ActiveResponse(active=await ctx.models.rollback())


@router.post("/{version}/activate", response_model=ActiveResponse, responses=_ADMIN)
async def activate(version: Annotated[str, Path(pattern=r"^\d{8}-\d{4,}$")], ctx: CtxDep, _: AdminDep) -> ActiveResponse:
    """Load, verify, project (if needed) and warm `version`, then switch to it atomically."""
    return ActiveResponse(active=await ctx.models.activate(version))
