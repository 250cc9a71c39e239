"""Domain errors of the service and their one mapping to HTTP (vLLM style: map once at the boundary).

Handlers and the engine raise these; `install_error_handlers` turns each into its status code, a JSON
`detail`, and Retry-After where the client should come back. Field errors use FastAPI's 422 shape.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 500
    retry_after: bool = False

    def __init__(self, detail: str, reason: str = "error"):
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class Overloaded(ServiceError):
    """The engine queue is full: shed the request (429 + Retry-After)."""
    status_code = 429
    retry_after = True


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its result was ready (504)."""
    status_code = 504


class NotReady(ServiceError):
    """No model is serving or a store the request needs is down (503 + Retry-After)."""
    status_code = 503
    retry_after = True


class ModelRefused(ServiceError):
    """An artifact failed to load/verify/warm up; the active model stays (409)."""
    status_code = 409


class UnknownVersion(ServiceError):
    status_code = 404


def field_error(loc: tuple[Any, ...], msg: str, value: Any, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's shape that names the field, e.g. loc=("body", "candidates", 3, "item_id")."""
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg, "input": value}])


def _json_safe(value: Any) -> Any:
    """Echoed inputs may hold NaN/Infinity or lone surrogates (Python's json accepts both); JSON output
    in UTF-8 can hold neither: they are echoed as text (`'nan'`, a literal `\\ud800`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(retry_after_s)} if exc.retry_after else None
        if exc.status_code >= 500:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=exc.status_code, headers=headers)


class BugBarrier:
    """ASGI middleware: an exception no handler claimed is a bug of ours. Log it with its traceback and
    answer a JSON 500, and do not re-raise: Starlette's outer error middleware re-raises, and uvicorn
    then closes the connection, which resets the client's next request on it. Readiness, the breaker
    and every other request are untouched."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("bug: %s %s raised", scope.get("method"), scope.get("path"))
            if started:  # half an answer is out: the connection cannot carry another one
                raise
            await JSONResponse({"detail": "internal error (logged)", "reason": "internal_error"},
                               status_code=500)(scope, receive, send)
