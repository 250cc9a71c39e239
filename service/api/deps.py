"""Dependencies as Annotated aliases (full-stack-fastapi-template style).

All `async def`: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per
score request (and GIL hand-offs with the inference thread) for work that never blocks."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.context import ServiceContext


async def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="Admin token (TWIN_ADMIN_TOKEN).")


async def require_admin(ctx: CtxDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 without a Bearer token, 403 with a wrong one (or when no admin token is configured)."""
    if creds is None:
        raise HTTPException(401, "admin endpoint: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    token = ctx.settings.admin_token
    if token is None or not secrets.compare_digest(creds.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "invalid admin token")


AdminDep = Annotated[None, Depends(require_admin)]


async def deadline_ms(
    ctx: CtxDep,
    # typed float, not float | None: the header is optional, but "null" is no value for it, and the
    # OpenAPI document must not offer one (FastAPI writes anyOf [number, null] for an Optional)
    x_deadline_ms: Annotated[float, Header(gt=0, le=600_000, allow_inf_nan=False,
                                           description="Per-request deadline override (ms).")] = None,  # type: ignore[assignment]
) -> float:
    return x_deadline_ms if x_deadline_ms is not None else ctx.settings.deadline_ms


DeadlineDep = Annotated[float, Depends(deadline_ms)]
