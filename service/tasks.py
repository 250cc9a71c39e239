"""Background-task helpers shared by the engine, the health probe and the model lifecycle."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(aw: Awaitable[T], timeout_s: float) -> T:
    """`await aw` for at most timeout_s, then TimeoutError (`aw` is cancelled).

    Not asyncio.wait_for: on Python 3.11 it returns `aw`'s result and drops a cancellation that arrives
    as `aw` completes (cpython gh-86296, fixed in 3.12 by building wait_for on asyncio.timeout). The
    health probe's loop lost its cancel that way and kept probing, so the app's shutdown waited on it
    forever (tests/test_service_slow_clients.py hung about one run in four)."""
    async with asyncio.timeout(max(timeout_s, 0.0)):
        return await aw


async def cancel_and_wait(task: asyncio.Task | None, redeliver_s: float = 1.0) -> None:
    """Cancel a background loop and wait until it has really stopped (its finally blocks ran). The
    cancel is sent again every `redeliver_s` while the task runs: library code that swallows one
    (as wait_for did above) must not keep a shutdown waiting."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=redeliver_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task
