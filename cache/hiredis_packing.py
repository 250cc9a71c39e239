"""redis.asyncio connection classes that pack commands with hiredis (C) instead of pure Python.

redis-py's synchronous client already packs with `hiredis.pack_command` when hiredis is
installed; its asyncio Connection does not, and for the wide commands of this project (HMGET of
~40 fields x 256 buckets per 10,000-item read, HSET of thousands of 256-byte values) the Python
packer was ~30% of a cold read. These subclasses change only `pack_command`; the wire bytes are
identical (tests/test_cache_connection.py compares them with redis-py's own packer).
"""
from __future__ import annotations

import hiredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError


class _HiredisPackMixin:
    def pack_command(self, *args):  # type: ignore[no-untyped-def]
        # Same normalisation as redis-py: "CONFIG GET" style names become separate arguments.
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:  # unsupported argument type (e.g. a numpy scalar)
            raise DataError(f"cannot pack redis command argument: {e}") from e


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
