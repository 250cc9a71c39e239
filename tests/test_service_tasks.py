"""The background-task helpers keep cancellations: a shutdown that cancels a probe loop must end."""
from __future__ import annotations

import asyncio

import pytest

from service.tasks import bounded, cancel_and_wait


async def test_a_cancel_that_arrives_as_the_awaited_completes_is_kept():
    # The race that asyncio.wait_for loses on Python 3.11: the result and the cancel in one loop turn.
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bounded(fut, 10.0))
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_bounded_times_out_and_cancels_what_it_awaited():
    fut = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await bounded(fut, 0.05)
    assert fut.cancelled()


async def test_cancel_and_wait_redelivers_a_swallowed_cancel():
    swallowed = 0

    async def stubborn() -> None:  # library code that eats the first cancel it sees
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, redeliver_s=0.05), 5.0)
    assert task.cancelled() and swallowed == 1
