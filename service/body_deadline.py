"""ASGI middleware: a request's whole body must arrive within `timeout_s` of the request's start.

Without it a client that announces 5,000 bytes and sends fewer, or sends one byte a second, holds its
connection and a request task for as long as it likes (uvicorn has no body timeout). Past the
deadline the client gets 408 with `Connection: close` (uvicorn then closes the connection), the app
sees the body end as a disconnect, and whatever it answers to that is dropped. The deadline covers
the body only: once the last body chunk arrived, receive() passes through (a streaming answer may
wait on it for a disconnect). The number of connections is bounded separately (uvicorn's
limit_concurrency, setting max_connections), so slow clients cannot exhaust the process either way.
"""
from __future__ import annotations

import asyncio
import logging

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = answered = False

        async def timed_receive() -> Message:
            nonlocal body_done, answered
            if body_done:
                return await receive()
            if answered:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                answered = True
                log.info("%s %s: body not received within %.1f s: 408", scope.get("method"), scope.get("path"),
                         self.timeout_s)
                await JSONResponse({"detail": f"request body not received within {self.timeout_s:g} s",
                                    "reason": "body_timeout"}, status_code=408,
                                   headers={"Connection": "close"})(scope, receive, send)
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:  # after the 408, the app's answer to the "disconnect" goes nowhere
                await send(message)

        await self.app(scope, timed_receive, guarded_send)
