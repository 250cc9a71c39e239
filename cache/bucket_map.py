"""item id -> fixed-width packed bytes, stored in one Redis hash per bucket (item_id % n_buckets).

The shared engine of CatalogStore and ProjectionStore. A read of N ids is one pipelined round
trip of one HMGET per touched bucket (fields = decimal ids); a write is one HSET per bucket.
Grouping by bucket is a numpy argsort, and values travel as one contiguous buffer. On a single
node the HMGETs are packed with numpy and sent and read by `cache.hiredis_packing.execute_packed`
(no redis-py pipeline); a cluster reads through redis-py's pipeline, which routes by slot.
"""
from __future__ import annotations

import logging
from itertools import chain
from typing import Any, Sequence

import numpy as np

from cache.hiredis_packing import execute_packed, pack_id_commands, packed_client
from cache.layout import check_ids, group_by_bucket

log = logging.getLogger(__name__)

# Bound the size of one pipeline on large puts (bytes held by the client at once ~ this * width).
MAX_ITEMS_PER_PIPELINE = 65_536


class BucketHashMap:
    """keys[b] is the hash of bucket b; every value is exactly `width` bytes."""

    def __init__(self, client: Any, keys: Sequence[bytes], width: int) -> None:
        if width < 1:
            raise ValueError(f"value width must be >= 1 byte, got {width}")
        self.client = client
        self.keys = list(keys)
        self.n_buckets = len(self.keys)
        self.width = width

    async def get(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [N] -> (values uint8 [N, width] in request order, found bool [N]).
        Missing ids read as zero bytes with found=False."""
        ids = check_ids(item_ids)
        n, w = ids.size, self.width
        if n == 0:
            return np.zeros((0, w), np.uint8), np.zeros(0, bool)
        order, groups = group_by_bucket(ids, self.n_buckets)
        sorted_ids = ids[order]  # [N] bucket-sorted: replies come back in this order
        if packed_client(self.client):  # single node: one write, the replies drained in one loop
            cmds = pack_id_commands(b"HMGET", [(self.keys[b], s, e) for b, s, e in groups], sorted_ids)
            replies = await execute_packed(self.client, cmds)
        else:  # cluster (routes per slot) or any other client: a redis-py pipeline
            pipe = self.client.pipeline(transaction=False)
            fields = sorted_ids.tolist()
            for b, s, e in groups:
                pipe.execute_command("HMGET", self.keys[b], *fields[s:e])
            replies = await pipe.execute()
        return self._from_replies(replies, sorted_ids, order)

    def _from_replies(self, replies: list[list[bytes | None]], sorted_ids: np.ndarray,
                      order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HMGET replies in bucket order -> (values uint8 [N, width], found bool [N]) in request
        order (value j goes to row order[j]); nil -> zero bytes, found False."""
        n, w = sorted_ids.size, self.width
        found_sorted = np.ones(n, bool)
        try:
            buf = b"".join(chain.from_iterable(replies))  # the common case: every id found
        except TypeError:  # some replies are nil
            flat: list[bytes | None] = list(chain.from_iterable(replies))
            found_sorted = np.fromiter((v is not None for v in flat), bool, n)
            zero = bytes(w)
            buf = b"".join(zero if v is None else v for v in flat)
        if len(buf) != n * w:
            lens = np.fromiter((len(v or b"") for v in chain.from_iterable(replies)), np.int64, n)
            bad = int(np.flatnonzero(found_sorted & (lens != w))[0])
            raise ValueError(f"item {sorted_ids[bad]} in {self.keys[int(sorted_ids[bad]) % self.n_buckets]!r} "
                             f"holds {lens[bad]} bytes, expected {w}")
        vals = np.empty((n, w), np.uint8)
        vals[order] = np.frombuffer(buf, np.uint8).reshape(n, w)
        found = np.empty(n, bool)
        found[order] = found_sorted
        return vals, found

    async def put(self, item_ids: np.ndarray, values: np.ndarray, replace_buckets: bool = False) -> None:
        """ids int64 [N], values uint8 [N, width]. With replace_buckets the touched buckets are
        first deleted, so each holds exactly the given items afterwards (the projector writes
        whole buckets this way; never use it with a partial bucket)."""
        ids = check_ids(item_ids)
        vals = np.ascontiguousarray(values, dtype=np.uint8)
        if vals.shape != (ids.size, self.width):
            raise ValueError(f"values must have shape ({ids.size}, {self.width}), got {vals.shape}")
        if ids.size == 0:
            return
        if np.unique(ids).size != ids.size:
            raise ValueError("item_ids passed to put() must be unique")
        order, groups = group_by_bucket(ids, self.n_buckets)
        sorted_ids = ids[order].tolist()
        mv = memoryview(vals[order].tobytes())  # one buffer; fields are zero-copy slices
        w = self.width
        pipe, pending = self.client.pipeline(transaction=False), 0
        for b, s, e in groups:
            if replace_buckets:
                pipe.execute_command("UNLINK", self.keys[b])
            args: list[Any] = [None] * (2 * (e - s))
            args[0::2] = sorted_ids[s:e]
            args[1::2] = [mv[i * w:(i + 1) * w] for i in range(s, e)]
            pipe.execute_command("HSET", self.keys[b], *args)
            pending += e - s
            if pending >= MAX_ITEMS_PER_PIPELINE:
                await pipe.execute()
                pipe, pending = self.client.pipeline(transaction=False), 0
        if pending:
            await pipe.execute()

    async def delete(self, item_ids: np.ndarray) -> int:
        """HDEL ids from their buckets (one round trip); returns how many existed."""
        ids = check_ids(item_ids)
        if ids.size == 0:
            return 0
        order, groups = group_by_bucket(ids, self.n_buckets)
        sorted_ids = ids[order].tolist()
        pipe = self.client.pipeline(transaction=False)
        for b, s, e in groups:
            pipe.execute_command("HDEL", self.keys[b], *sorted_ids[s:e])
        return int(sum(await pipe.execute()))

    async def clear_buckets(self, buckets: Sequence[int]) -> None:
        if buckets:
            pipe = self.client.pipeline(transaction=False)
            for b in buckets:
                pipe.execute_command("UNLINK", self.keys[b])
            await pipe.execute()

    async def read_buckets(self, buckets: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole buckets (HGETALL, one round trip) -> per bucket (ids int64 [m], values uint8 [m, width])."""
        pipe = self.client.pipeline(transaction=False)
        for b in buckets:
            pipe.execute_command("HGETALL", self.keys[b])
        out = []
        for b, res in zip(buckets, await pipe.execute()):
            items = list(res.items()) if isinstance(res, dict) else list(zip(res[0::2], res[1::2]))
            ids = np.array([int(k) for k, _ in items], dtype=np.int64)
            buf = b"".join(v for _, v in items)
            if len(buf) != len(items) * self.width:
                raise ValueError(f"bucket {self.keys[b]!r} holds values that are not {self.width} bytes")
            out.append((ids, np.frombuffer(buf, np.uint8).reshape(len(items), self.width)))
        return out

    async def all_ids(self) -> np.ndarray:
        """Every stored id (HKEYS of every bucket, one round trip), sorted int64 [M]."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.execute_command("HKEYS", key)
        fields = list(chain.from_iterable(await pipe.execute()))
        if not fields:
            return np.zeros(0, np.int64)
        return np.sort(np.array(fields).astype(np.int64))

    async def delete_all(self) -> int:
        """UNLINK every bucket key; returns how many existed."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.execute_command("UNLINK", key)
        return int(sum(await pipe.execute()))
