"""open_redis: embedded server lifecycle, URLs with auth, cluster/TLS selection, hiredis packing."""
import os
import sys

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError

from cache.connection import EmbeddedRedis, RedisOptions, open_redis, redact
from cache.hiredis_packing import HiredisConnection, HiredisSSLConnection, connection_class_for


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
