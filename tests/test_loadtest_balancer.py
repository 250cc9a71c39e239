"""The Python stand-in for nginx in scripts/run_stack.sh: round robin, failover, byte-exact relay."""
from __future__ import annotations

import asyncio

import pytest

from loadtest.balancer import RoundRobinBalancer, parse_hostport

LIMIT = 1 << 20  # line buffer of the test peers, above the 300 kB line below


async def _backend(tag: bytes) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():  # a tiny line protocol: answers "<tag>:<line>" per line
            w.write(tag + b":" + line)
            await w.drain()
        w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, limit=LIMIT)


async def _ask(port: int, lines: list[bytes]) -> list[bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=LIMIT)
    out = []
    for line in lines:
        w.write(line)
        await w.drain()
        out.append(await asyncio.wait_for(r.readline(), 5))
    w.close()
    return out


def _port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


async def test_round_robin_keeps_a_connection_on_one_backend():
    a, b = await _backend(b"a"), await _backend(b"b")
    lb = RoundRobinBalancer([("127.0.0.1", _port(a)), ("127.0.0.1", _port(b))])
    front = await lb.serve("127.0.0.1", 0)
    answers = [await _ask(_port(front), [b"x\n", b"y\n"]) for _ in range(4)]
    assert answers == [[b"a:x\n", b"a:y\n"], [b"b:x\n", b"b:y\n"]] * 2
    big = b"z" * 300_000 + b"\n"  # larger than one relay chunk
    assert (await _ask(_port(front), [big]))[0] == b"a:" + big
    assert lb.connections == [3, 2]
    for s in (front, a, b):
        s.close()


async def test_dead_backend_is_skipped_without_failing_the_client():
    alive = await _backend(b"ok")
    dead = await _backend(b"dead")
    dead_port = _port(dead)
    dead.close()
    await dead.wait_closed()
    lb = RoundRobinBalancer([("127.0.0.1", dead_port), ("127.0.0.1", _port(alive))])
    front = await lb.serve("127.0.0.1", 0)
    for _ in range(3):
        assert await _ask(_port(front), [b"q\n"]) == [b"ok:q\n"]
    assert lb.connections == [0, 3]
    alive.close()
    # nothing reachable: the client sees a closed connection, the balancer keeps running
    r, w = await asyncio.open_connection("127.0.0.1", _port(front))
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    front.close()


def test_hostport_parsing():
    assert parse_hostport("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_hostport("8001")
    with pytest.raises(ValueError, match="at least one backend"):
        RoundRobinBalancer([])
