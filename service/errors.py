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
    """Echoed inputs may hold NaN/Infinity (Python's json accepts them); JSON output cannot."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
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
