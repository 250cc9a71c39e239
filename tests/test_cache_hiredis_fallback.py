"""cache/hiredis_packing.py reads redis-py's private hiredis parser (`redis._parsers.hiredis`:
`_AsyncHiredisParser`, `NOT_ENOUGH_DATA`) to drain replies in one loop. pyproject caps redis-py and
hiredis at the versions tested; this pins what happens when a release renames those names anyway:
execute_packed takes the public `read_response` path and answers exactly as the fast path does,
against a real Redis."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import redis._parsers.hiredis as private_parser
from redis.exceptions import ResponseError

from cache import hiredis_packing
from cache.hiredis_packing import execute_packed, pack, pack_id_commands


def _rename_away(monkeypatch, name: str) -> None:
    """What a redis-py release that renames `name` looks like to cache/hiredis_packing.py: its import
    of the private module finds no such name. The module object redis-py's own parsers run on is
    left whole (deleting a name there would break redis-py itself, not simulate a release)."""
    stub = types.ModuleType(private_parser.__name__)
    stub.__dict__.update({k: v for k, v in vars(private_parser).items() if k != name})
    monkeypatch.setitem(sys.modules, private_parser.__name__, stub)


async def _commands(client, keys) -> list[bytes]:
    """A mixed batch: wide HMGETs with misses (the id packer's output), GET of a string and of a
    missing key, an integer reply and a PING."""
    key, other = keys.item_bucket(0), keys.item_bucket(1)
    ids = np.arange(0, 600, dtype=np.int64)
    await client.hset(key, mapping={int(i): bytes([i % 251]) * 256 for i in ids[::3]})
    await client.set(other, b"s")
    return [*pack_id_commands(b"HMGET", [(key, 0, 300), (key, 300, 600)], ids), pack(b"GET", other),
            pack(b"GET", keys.item_bucket(2)), pack(b"HLEN", key), pack(b"PING")]


@pytest.mark.parametrize("private_name", ["_AsyncHiredisParser", "NOT_ENOUGH_DATA"])
async def test_without_redis_py_private_parser_the_public_path_gives_the_same_replies(
        redis_handle, keys, monkeypatch, private_name):
    client = redis_handle.client
    cmds = await _commands(client, keys)
    fast = await execute_packed(client, cmds)

    _rename_away(monkeypatch, private_name)
    public_reads = 0
    conn = await client.connection_pool.get_connection()
    try:
        assert hiredis_packing._raw_reader(conn) is None  # the fast path declines, it does not crash
        cls = type(conn)  # TCP or unix socket (the embedded server): whichever class the pool makes
    finally:
        await client.connection_pool.release(conn)
    assert issubclass(cls, hiredis_packing._HiredisPackMixin)
    read_response = cls.read_response

    async def counting_read_response(self, *args, **kwargs):
        nonlocal public_reads
        public_reads += 1
        return await read_response(self, *args, **kwargs)

    monkeypatch.setattr(cls, "read_response", counting_read_response)

    assert await execute_packed(client, cmds) == fast
    assert public_reads == len(cmds)  # every reply came through redis-py's public read_response
    assert sum(v is not None for v in fast[0]) == 100 and fast[-1] == b"PONG"  # the batch is not trivial


async def test_without_the_private_parser_an_error_reply_still_raises_after_every_reply(redis_handle, keys,
                                                                                          monkeypatch):
    client = redis_handle.client
    key, text = keys.item_bucket(0), keys.item_bucket(1)
    await client.hset(key, mapping={0: b"a", 1: b"b"})
    await client.set(text, b"not a hash")
    _rename_away(monkeypatch, "_AsyncHiredisParser")
    with pytest.raises(ResponseError, match=r"command #2 of 3: WRONGTYPE"):
        await execute_packed(client, [pack(b"HMGET", key, 0), pack(b"HMGET", text, 0), pack(b"HMGET", key, 1)])
    # the connection stayed in step: the next batch reads its own replies
    assert await execute_packed(client, [pack(b"HMGET", key, 1), pack(b"PING")]) == [[b"b"], b"PONG"]
