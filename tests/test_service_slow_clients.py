"""Slow and stalled request bodies, with real sockets against the uvicorn server the service runs
(service.__main__.uvicorn_config): a body that stops short or trickles in is answered 408 within
body_timeout_s and its connection closed, while other clients are served; the number of connections
is bounded (max_connections -> 503 past it)."""
from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from service.__main__ import uvicorn_config
from tests.conftest import free_port
from tests.service_world import NOW_MS, World, world  # noqa: F401

SCORE = json.dumps({"user_id": 2, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}).encode()


def task_stacks() -> str:
    """Every task of the loop with its stack: what a hung start or stop is waiting on."""
    out = io.StringIO()
    for t in asyncio.all_tasks():
        t.print_stack(file=out)
    return out.getvalue()


async def start_server(settings, log_level: str = "warning") -> tuple[int, uvicorn.Server, asyncio.Task]:
    """A real uvicorn server on a free port, started: (port, server, its serve() task)."""
    port = free_port(range_env="TWIN_TEST_HTTP_PORTS")
    server = uvicorn.Server(uvicorn_config(settings.model_copy(update={"port": port}), log_level=log_level))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        assert not task.done(), "uvicorn exited"
        assert time.monotonic() < deadline, "uvicorn did not start within 60 s:\n" + task_stacks()
        await asyncio.sleep(0.02)
    return port, server, task


async def stop_server(server: uvicorn.Server, task: asyncio.Task) -> None:
    server.should_exit = True
    done, _ = await asyncio.wait([task], timeout=30)
    assert done, "uvicorn did not stop within 30 s:\n" + task_stacks()
    task.result()


@asynccontextmanager
async def serving(settings) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    port, server, task = await start_server(settings)
    try:
        yield port, server
    finally:
        await stop_server(server, task)


def head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, everything until the server closed the connection)."""
    data = await reader.read()  # to EOF: the server must close
    return int(data.split(b" ", 2)[1]), data


async def score_once(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head("/v1/score", len(SCORE)) + SCORE)
    status = int((await asyncio.wait_for(reader.readline(), 10)).split(b" ", 2)[1])
    writer.close()
    return status


async def test_a_body_cut_short_is_answered_408_and_the_connection_closed(world: World):
    settings = world.settings.model_copy(update={"body_timeout_s": 1.0})
    async with serving(settings) as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(head("/v1/events", 5000) + b'{"events": [')  # announces 5,000 bytes, sends 12
        status, data = await asyncio.wait_for(read_answer(reader), 5)
        waited = time.perf_counter() - t0
        writer.close()
        ok = await score_once(port)
    assert status == 408 and b"body_timeout" in data and b"connection: close" in data.lower(), data
    assert 0.9 < waited < 3.0
    assert ok == 200


async def test_a_client_that_never_closes_cannot_hold_up_the_shutdown(world: World):
    settings = world.settings.model_copy(update={"shutdown_timeout_s": 1.0, "body_timeout_s": 60.0})
    port, server, task = await start_server(settings, log_level="critical")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head("/v1/events", 5000) + b'{"events": [')  # a request whose body never ends
    await writer.drain()
    while not server.server_state.tasks:  # its request task is running
        await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    assert time.perf_counter() - t0 < 5.0
    writer.close()


async def test_trickling_clients_are_cut_off_while_others_are_served(world: World):
    settings = world.settings.model_copy(update={"body_timeout_s": 1.5})
    async with serving(settings) as (port, server):
        async def trickle() -> tuple[int, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            writer.write(head("/v1/score", len(SCORE)))

            async def drip() -> None:
                for b in SCORE:  # one byte a second, far slower than the deadline allows
                    writer.write(bytes([b]))
                    await asyncio.sleep(1.0)

            dripping = asyncio.create_task(drip())
            try:
                status, _ = await asyncio.wait_for(read_answer(reader), 10)
            finally:
                dripping.cancel()
                writer.close()
            return status, time.perf_counter() - t0

        slow = [asyncio.create_task(trickle()) for _ in range(20)]
        t0 = time.perf_counter()
        fast = [await score_once(port) for _ in range(5)]  # served while the 20 trickle
        fast_s = time.perf_counter() - t0
        results = await asyncio.gather(*slow)
    assert fast == [200] * 5 and fast_s < 5.0
    assert [s for s, _ in results] == [408] * 20, results
    assert max(t for _, t in results) < 4.0, results  # each cut at ~1.5 s, not held for 20+ s


async def test_connections_past_max_connections_get_503_at_once(world: World):
    settings = world.settings.model_copy(update={"body_timeout_s": 6.0, "max_connections": 4})
    async with serving(settings) as (port, server):
        held = []
        for _ in range(3):  # stalled bodies occupy the allowed connections (uvicorn counts the new one too)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head("/v1/score", len(SCORE)) + SCORE[:5])
            held.append((reader, writer))
        give_up = time.monotonic() + 4.0  # well inside their 6 s body deadline
        while len(server.server_state.tasks) < 3:  # their requests are running (waiting for the body)
            assert time.monotonic() < give_up, f"{len(server.server_state.tasks)} of 3 requests started"
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        refused = await asyncio.wait_for(score_once(port), 2)
        refused_s = time.perf_counter() - t0
        statuses = [(await asyncio.wait_for(read_answer(r), 10))[0] for r, _ in held]
        for _, w in held:
            w.close()
        after = await score_once(port)
    assert refused == 503 and refused_s < 1.0
    assert statuses == [408] * 3
    assert after == 200
