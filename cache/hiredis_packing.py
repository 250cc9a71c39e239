"""redis.asyncio connection classes that pack commands with hiredis (C), and read a batch of
replies in one loop.

redis-py's synchronous client already packs with `hiredis.pack_command` when hiredis is
installed; its asyncio Connection does not, and for the wide commands of this project (HMGET of
~40 fields x 256 buckets per 10,000-item read, HSET of thousands of 256-byte values) the Python
packer was ~30% of a cold read. `pack_command` here gives identical wire bytes
(tests/test_cache_connection.py compares them with redis-py's own packer).

`pack_id_commands` packs commands whose arguments are many integer ids (HMGET key id...) with
numpy, ~3x faster than hiredis at 10,000 ids. `execute_packed(client, commands)` is a pipeline
without redis-py's pipeline machinery (per reply: a timeout context, response callbacks,
bookkeeping; ~20 us x 256 replies): one write of pre-packed commands, then every reply drained
from the hiredis reader in one loop. Only for a single-node `redis.asyncio.Redis`;
`packed_client(client)` says whether a client qualifies.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, NamedTuple, Sequence

import hiredis
import numpy as np
import redis.asyncio as aredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(*args: Any) -> bytes:
    """One command -> its RESP bytes (same normalisation as redis-py: "CONFIG GET" style names
    become separate arguments)."""
    if isinstance(args[0], str):
        args = tuple(args[0].encode().split()) + args[1:]
    elif b" " in args[0]:
        args = tuple(args[0].split()) + args[1:]
    try:
        return hiredis.pack_command(args)
    except TypeError as e:  # unsupported argument type (e.g. a numpy scalar)
        raise DataError(f"cannot pack redis command argument: {e}") from e


_POW10 = 10 ** np.arange(1, 19, dtype=np.uint64)  # [18] 10 .. 10^18


def _decimal_bulk_strings(ids: np.ndarray) -> tuple[bytes, np.ndarray]:
    """ids int64 [N] >= 0 -> (b"$<len>\\r\\n<decimal>\\r\\n" for every id, concatenated;
    end offset of each id's record int64 [N]). Vectorized: w passes of x // 10 over [N] and one
    boolean compress, no per-id Python (hiredis.pack_command converts ints one by one: 3x slower
    at N = 10,000, and needs ids.tolist() first)."""
    x = ids.astype(np.uint64)
    nd = 1 + np.searchsorted(_POW10, x, side="right")  # digits per id [N], 1..19
    w = int(nd.max())
    # rec[:, i] is id i's record "$", 2 length digits, CRLF, w digits, CRLF: [w + 7, N], so that
    # each row is filled contiguously; the transpose is read in id order at the end.
    rec = np.empty((w + 7, x.size), np.uint8)
    rec[0] = ord("$")
    np.add(nd // 10, ord("0"), out=rec[1], casting="unsafe")
    np.add(nd % 10, ord("0"), out=rec[2], casting="unsafe")
    rec[3], rec[4], rec[w + 5], rec[w + 6] = 13, 10, 13, 10
    for j in range(w + 4, 4, -1):  # digits right-aligned, least significant first
        q = x // np.uint64(10)
        np.subtract(x, q * np.uint64(10), out=rec[j], casting="unsafe")
        x = q
    rec[5:w + 5] += ord("0")
    keep = np.ones(rec.shape, bool)  # drop a 1-digit length's leading "0" and leading zero digits
    keep[1] = nd >= 10
    keep[5:w + 5] = np.arange(w)[:, None] >= (w - nd)
    return rec.T[keep.T].tobytes(), np.cumsum(nd + 6 + (nd >= 10))


def pack_id_commands(name: bytes, commands: Sequence[tuple[bytes, int, int]], ids: np.ndarray) -> list[bytes]:
    """One command `name key ids[s] .. ids[e-1]` per (key, s, e), packed; ids int64 [N] >= 0.
    Bytes identical to pack(name, key, *ids[s:e].tolist())."""
    body, ends = _decimal_bulk_strings(ids)
    starts = np.concatenate(([0], ends)).tolist()  # byte offset of each id's record, and the end
    mv = memoryview(body)
    head = b"$%d\r\n%s\r\n" % (len(name), name)
    return [b"".join((b"*%d\r\n" % (e - s + 2), head, b"$%d\r\n%s\r\n" % (len(key), key), mv[starts[s]:starts[e]]))
            for key, s, e in commands]


class _RawReader(NamedTuple):
    reader: hiredis.Reader  # gets(False) -> one reply, or `need_more`
    read_more: Callable[[], Awaitable[Any]]  # feeds the reader one socket read; EOF -> ConnectionError
    need_more: object
    push_type: type | None  # RESP3 out-of-band pushes, handed to `on_push` as read_response does
    on_push: Callable[[Any], Awaitable[Any]]


def _raw_reader(conn: Connection) -> _RawReader | None:
    """The hiredis reader of a connected connection, or None. The one place that touches
    redis-py internals (the parser and its reader, unchanged from redis-py 5 to 8); when they
    change this returns None and `execute_packed` reads through the public `read_response`."""
    try:
        from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
    except ImportError:
        return None
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not (isinstance(parser, _AsyncHiredisParser) and isinstance(reader, hiredis.Reader)
            and getattr(parser, "_connected", False)):
        return None
    push_type = getattr(hiredis, "PushNotification", None) if conn.protocol == 3 else None
    if conn.protocol == 3 and push_type is None:  # hiredis < 3.2: pushes look like plain arrays
        return None
    return _RawReader(reader, parser.read_from_socket, NOT_ENOUGH_DATA, push_type, parser.handle_push_response)


def _where(conn: Any) -> str:
    return getattr(conn, "path", None) or f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


class _HiredisPackMixin:
    def pack_command(self, *args):  # type: ignore[no-untyped-def]
        return [pack(*args)]

    async def execute_packed(self, commands: Sequence[bytes]) -> list[Any]:
        """Send pre-packed commands in one write; read exactly len(commands) replies, in order, as
        bytes (no decoding). Every reply is read before the first error reply is raised, so the
        connection stays in step. A socket error disconnects and raises redis's ConnectionError
        (TimeoutError after socket_timeout without data), as read_response does."""
        conn: Any = self
        await conn.send_packed_command(list(commands))
        raw = _raw_reader(conn)
        if raw is not None:
            return _raise_first_error(await self._drain(raw, len(commands)))
        replies = []
        for _ in commands:
            try:
                replies.append(await conn.read_response(disable_decoding=True))
            except ResponseError as e:
                replies.append(e)
        return _raise_first_error(replies)

    async def _drain(self, raw: _RawReader, n: int) -> list[Any]:
        """n replies from the hiredis reader, feeding it socket reads; socket_timeout applies to
        each read, as in read_response."""
        conn: Any = self
        loop = asyncio.get_running_loop()
        timeout = conn.socket_timeout
        out: list[Any] = []
        try:
            async with asyncio.timeout(timeout) as deadline:
                while len(out) < n:
                    r = raw.reader.gets(False)
                    if r is raw.need_more:
                        await raw.read_more()
                        if timeout:
                            deadline.reschedule(loop.time() + timeout)
                    elif raw.push_type is not None and isinstance(r, raw.push_type):
                        await raw.on_push(r)
                    else:
                        out.append(r)
        # As read_response: the reply stream is out of step, so disconnect; redis's own exception
        # types, which Retry and the callers' degraded paths know.
        except asyncio.TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading from {_where(conn)}") from None
        except OSError as e:
            await conn.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while reading from {_where(conn)}: {e}") from e
        except BaseException:  # redis ConnectionError at EOF, a protocol error, cancellation
            await conn.disconnect(nowait=True)
            raise
        if conn.health_check_interval:  # a reply just came: the next health-check PING can wait
            conn.next_health_check = loop.time() + conn.health_check_interval
        return out


def _raise_first_error(replies: list[Any]) -> list[Any]:
    # Any error reply, not only ResponseError: redis-py's parser makes "LOADING" a BusyLoadingError and
    # "NOAUTH" an AuthenticationError (ConnectionErrors), which callers must see raised, by kind.
    for i, r in enumerate(replies):
        if isinstance(r, RedisError):
            r.args = (f"command #{i + 1} of {len(replies)}: {r.args[0] if r.args else r}",)
            raise r
    return replies


class HiredisConnection(_HiredisPackMixin, Connection):
    pass


class HiredisSSLConnection(_HiredisPackMixin, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPackMixin, UnixDomainSocketConnection):
    pass


def connection_class_for(scheme: str) -> type[Connection]:
    """URL scheme (redis, rediss, unix) -> the matching hiredis-packing connection class."""
    classes = {"redis": HiredisConnection, "rediss": HiredisSSLConnection, "unix": HiredisUnixConnection}
    if scheme not in classes:
        raise ValueError(f"unsupported redis URL scheme {scheme!r}; expected one of {sorted(classes)}")
    return classes[scheme]


def packed_client(client: Any) -> bool:
    """True for a single-node redis.asyncio.Redis whose pool makes our connections (not a
    cluster, not a single-connection client, not a wrapper)."""
    return (type(client) is aredis.Redis and not client.single_connection_client
            and issubclass(client.connection_pool.connection_class, _HiredisPackMixin))


async def execute_packed(client: aredis.Redis, commands: Sequence[bytes]) -> list[Any]:
    """`_HiredisPackMixin.execute_packed` on one pooled connection. Connection and timeout errors
    are retried with the connection's Retry policy, after a disconnect, exactly as a redis-py
    pipeline does; the connection always goes back to the pool (a disconnected one reconnects
    on its next use)."""
    pool = client.connection_pool
    conn: Any = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(lambda: conn.execute_packed(commands), lambda _err: conn.disconnect())
    finally:
        await pool.release(conn)
