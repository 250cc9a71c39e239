"""open_redis: embedded server lifecycle, URLs with auth, cluster/TLS selection, hiredis and numpy
packing, and the packed multi-reply read (execute_packed)."""
import asyncio
import os
import sys
import time

import numpy as np
import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from cache import hiredis_packing
from cache.connection import EmbeddedRedis, RedisOptions, open_redis, redact
from cache.hiredis_packing import (HiredisConnection, HiredisSSLConnection, connection_class_for, execute_packed,
                                   pack, pack_id_commands, packed_client)


async def test_embedded_server_is_started_and_stopped_with_the_handle():
    h = await open_redis(None)
    emb = h.embedded
    assert h.url.startswith("unix://") and not h.is_cluster
    assert await h.ping()
    await h.client.set("k", b"v")
    assert await h.client.get("k") == b"v"
    await h.aclose()
    assert emb.proc.poll() is not None  # the process exited (and was reaped)
    assert not os.path.exists(emb.dir)


async def test_embedded_server_with_a_data_dir_keeps_data_across_restarts(tmp_path):
    h = await open_redis(None, embedded_dir=str(tmp_path / "data"))
    await h.client.set("kept", b"1")
    await h.aclose()
    h = await open_redis(None, embedded_dir=str(tmp_path / "data"))
    try:
        assert await h.client.get("kept") == b"1"
    finally:
        await h.aclose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_embedded_server_dies_with_the_process_that_started_it(tmp_path):
    """No orphans: a killed owner (SIGKILL, no cleanup) takes its server down with it."""
    import shutil
    import signal
    import subprocess
    import time

    code = ("from cache.connection import EmbeddedRedis; import sys, time; e = EmbeddedRedis(); "
            "print(e.pid, e._tmp, flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    pid, tmp = owner.stdout.readline().split()
    server_pid = int(pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    for _ in range(200):
        try:
            with open(f"/proc/{server_pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.02)
    else:
        os.kill(server_pid, signal.SIGKILL)
        raise AssertionError("the embedded redis-server outlived its owner")
    shutil.rmtree(tmp, ignore_errors=True)  # the killed owner could not clean up


def test_embedded_server_with_an_unusable_data_dir_fails_loudly(tmp_path):
    bad = tmp_path / "not-a-dir"
    bad.write_text("x")
    with pytest.raises((RuntimeError, OSError)):
        EmbeddedRedis(str(bad))


async def test_password_in_url_is_used_and_redacted(redis_server):
    srv = redis_server("--requirepass", "s3cret")
    h = await open_redis(f"redis://:s3cret@127.0.0.1:{srv.port}/0")
    try:
        assert await h.ping()
        assert "s3cret" not in h.url and "***" in h.url
    finally:
        await h.aclose()
    bad = await open_redis(f"redis://:wrong@127.0.0.1:{srv.port}/0")
    try:
        with pytest.raises(AuthenticationError):
            await bad.client.ping()
    finally:
        await bad.aclose()


async def test_unreachable_redis_fails_ping_within_the_timeouts():
    import time

    h = await open_redis("redis://127.0.0.1:1/0", options=RedisOptions(socket_timeout=0.2, connect_timeout=0.2, retries=1))
    t = time.perf_counter()
    assert await h.ping() is False
    assert time.perf_counter() - t < 3
    await h.aclose()


async def test_rediss_url_gets_a_tls_connection_with_hiredis_packing():
    h = await open_redis("rediss://127.0.0.1:1/0?ssl_cert_reqs=none")
    assert h.client.connection_pool.connection_class is HiredisSSLConnection
    await h.aclose()
    with pytest.raises(ValueError, match="scheme"):
        connection_class_for("http")


def test_redact_hides_only_the_password():
    assert redact("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
    assert redact("redis://host:6379") == "redis://host:6379"


@pytest.mark.parametrize("args", [
    ("HMGET", b"twin:item:{b1}", 1, 22, 2**62),
    ("HSET", b"k", 5, memoryview(b"\x00\xff" * 4), 7, b"x"),
    ("CONFIG GET", "maxmemory"),
    ("SET", "f", 1.5),
])
def test_hiredis_packing_matches_redis_py_bytes(args):
    ours = b"".join(bytes(x) for x in HiredisConnection().pack_command(*args))
    theirs = b"".join(bytes(x) for x in Connection().pack_command(*args))
    assert ours == theirs


def test_packed_id_commands_match_hiredis_bytes():
    ids = np.array([0, 9, 10, 99, 100, 123456789012, 10**18 - 1, 10**18, 2**63 - 1, 5], np.int64)
    cmds = [(b"k1", 0, 3), (b"key{2}", 3, 9), (b"z", 9, 10)]
    assert pack_id_commands(b"HMGET", cmds, ids) == [pack(b"HMGET", k, *ids[s:e].tolist()) for k, s, e in cmds]


# ---- execute_packed: one write, every reply read in one loop ------------------------------------
class CuttingProxy:
    """Loopback TCP proxy in front of a redis-server that closes a client's socket once it has
    passed `cut_after` reply bytes since `arm()` (`cuts` times), as a server crash would."""

    def __init__(self, port: int) -> None:
        self.port, self.cut_after, self.cuts, self._sent = port, None, 0, 0

    def arm(self, cut_after: int, cuts: int = 1) -> None:
        self.cut_after, self.cuts, self._sent = cut_after, cuts, 0

    async def __aenter__(self) -> "CuttingProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.cuts and self._sent + len(data) > self.cut_after:
                        dst.write(data[:self.cut_after - self._sent])
                        self.cuts -= 1
                        break
                    self._sent += len(data) if replies else 0
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                cw.close()
                sw.close()

        await asyncio.gather(pump(cr, sw, False), pump(sr, cw, True))


W = 256


async def _fill(client, key: bytes, n: int) -> list[bytes]:
    values = [bytes([i % 251]) * W for i in range(n)]
    await client.hset(key, mapping=dict(zip(range(n), values)))
    return values


@pytest.fixture(params=["hiredis reader", "read_response"])
def reply_path(request, monkeypatch) -> str:
    """Both ways execute_packed reads: redis-py's hiredis reader directly, and the public
    read_response it falls back to when that reader is not there."""
    if request.param == "read_response":
        monkeypatch.setattr(hiredis_packing, "_raw_reader", lambda conn: None)
    return request.param


async def test_execute_packed_returns_every_reply_in_order_with_nils(redis_handle, keys, reply_path):
    c = redis_handle.client
    assert packed_client(c)
    key, other = keys.item_bucket(0), keys.item_bucket(1)
    values = await _fill(c, key, 3)
    await c.set(other, b"s")
    cmds = [pack(b"HMGET", key, 2, 99, 0), pack(b"GET", other), pack(b"GET", keys.item_bucket(2)),
            pack(b"HMGET", key, 1)]
    assert await execute_packed(c, cmds) == [[values[2], None, values[0]], b"s", None, [values[1]]]


async def test_an_error_reply_in_the_middle_raises_after_every_reply_is_read(redis_handle, keys, reply_path):
    c = redis_handle.client
    key, text = keys.item_bucket(0), keys.item_bucket(1)
    values = await _fill(c, key, 4)
    await c.set(text, b"not a hash")
    conn_id = await c.client_id()
    with pytest.raises(ResponseError, match=r"command #2 of 3: WRONGTYPE"):
        await execute_packed(c, [pack(b"HMGET", key, 0), pack(b"HMGET", text, 0), pack(b"HMGET", key, 1, 2)])
    # the same pooled connection is still in step: the next batch gets its own replies
    assert await execute_packed(c, [pack(b"HMGET", key, 3), pack(b"PING")]) == [[values[3]], b"PONG"]
    assert await c.client_id() == conn_id  # an error reply is not a reason to drop the connection


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_reply_cut_mid_read(redis_server, retries):
    """No retry: redis's ConnectionError at the socket's EOF (not after a timeout), and the pool's
    next call works on a new socket. One retry: the read is redone on a new connection, as a
    redis-py pipeline's would be, and the caller never sees the cut."""
    srv = redis_server()
    async with CuttingProxy(srv.port) as proxy:
        h = await open_redis(proxy.url, options=RedisOptions(retries=retries, socket_timeout=5, backoff_base=0.001))
        try:
            values = await _fill(h.client, b"h", 1000)
            cmds = [pack(b"HMGET", b"h", *range(0, 500)), pack(b"HMGET", b"h", *range(500, 1000))]
            proxy.arm(cut_after=100_000)  # the replies are 2 x ~132 kB
            if retries == 0:
                t = time.perf_counter()
                with pytest.raises(RedisConnectionError):
                    await execute_packed(h.client, cmds)
                assert time.perf_counter() - t < 2
            got = await execute_packed(h.client, cmds)
            assert proxy.cuts == 0 and got[0] + got[1] == values
        finally:
            await h.aclose()


async def test_a_server_closing_after_some_replies_is_a_connection_error(redis_url, keys, reply_path):
    """QUIT: the server answers +OK and closes; the replies after it never come."""
    h = await open_redis(redis_url, options=RedisOptions(retries=0))
    try:
        key = keys.item_bucket(0)
        values = await _fill(h.client, key, 2)
        with pytest.raises(RedisConnectionError):
            await execute_packed(h.client, [pack(b"HMGET", key, 0), pack(b"QUIT"), pack(b"HMGET", key, 1)])
        assert await execute_packed(h.client, [pack(b"HMGET", key, 1)]) == [[values[1]]]
    finally:
        await h.aclose()


def test_only_a_plain_single_node_client_takes_the_packed_path(redis_handle):
    import redis.asyncio as aredis

    assert packed_client(redis_handle.client)
    assert not packed_client(aredis.Redis())  # redis-py's own connection class
    assert not packed_client(aredis.Redis(connection_pool=redis_handle.client.connection_pool,
                                          single_connection_client=True))
