"""Per-model-version item projections (float16[D]) in Redis, with the version's completion marker.

Layout (docs/redis_layout.md):
    P:v:V:proj:{b<bucket>}  hash  field = item id, value = float16[D] little-endian (2*D bytes)
    P:v:V:done              hash  bucket -> "count:checksum16hex"  (projector progress)
    P:v:V:marker            hash  version, count, checksum, dim, n_buckets, completed_at
    P:v:V:gen               hash  gen, floor: the change generation scorers poll
    P:v:V:changed           zset  item id -> generation of its last re-projection (capped change feed)
    P:versions              set   versions with projection keys
A version is servable only when its marker exists; the marker is written last, by whichever
projector shard completes the final bucket, from the per-bucket records.

Change feed: a run that rewrites projections of a version that may be served bumps `gen` AFTER its
data is written: an incremental run lists its ids in `changed` under the new generation first
(`note_changed`), a full run raises `floor` to it (`note_reset`: "everything may have changed").
A scorer that knows generation k reads (gen, floor): gen == k -> nothing new; floor > k -> drop all it
caches of V; else the ids of `changed` with score in (k, gen] -> drop those (service/freshness.py).
Generations are Unix milliseconds, strictly increasing (see _next_generation). The feed is capped at CHANGED_CAP ids: trimming the oldest raises floor, so a scorer that was
behind the trimmed part falls back to dropping everything. One writer per version at a time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

import numpy as np

from cache import checksum as ck
from cache.bucket_map import BucketHashMap
from cache.layout import PROJ_DTYPE, Keys, check_version

log = logging.getLogger(__name__)

CHANGED_CAP = 1_000_000  # ids kept in a version's change feed (~60 MB of zset at most)
_FEED_CHUNK = 10_000


class ProjectionStore:
    """put/get packed float16 projections of one model version; a miss is found=False, zero row."""

    def __init__(self, client: Any, keys: Keys, version: str, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"projection dim D must be >= 1, got {dim}")
        self.client = client
        self.keys = keys
        self.version = check_version(version)
        self.dim = dim
        self._map = BucketHashMap(client, keys.proj_buckets(version), dim * PROJ_DTYPE.itemsize)
        self._registered = False

    # ---- data -------------------------------------------------------------------------------
    def _pack(self, vecs: np.ndarray, n: int) -> np.ndarray:
        vecs = np.asarray(vecs)
        if vecs.shape != (n, self.dim):
            raise ValueError(f"vecs must have shape ({n}, {self.dim}), got {vecs.shape}")
        return np.ascontiguousarray(vecs, dtype=PROJ_DTYPE).view(np.uint8)  # [N, 2D]

    async def _register(self) -> None:
        if not self._registered:
            await self.client.sadd(self.keys.versions(), self.version)
            self._registered = True

    async def put(self, item_ids: np.ndarray, vecs: np.ndarray) -> None:
        """item_ids int64 [N], vecs float16 [N, D] (other float dtypes are cast to float16)."""
        await self._register()
        await self._map.put(item_ids, self._pack(vecs, len(item_ids)))

    async def put_buckets(self, item_ids: np.ndarray, vecs: np.ndarray) -> None:
        """Replace whole buckets: afterwards each touched bucket holds exactly these items."""
        await self._register()
        await self._map.put(item_ids, self._pack(vecs, len(item_ids)), replace_buckets=True)

    async def clear_buckets(self, buckets: Sequence[int]) -> None:
        """Empty whole buckets (the projector's buckets that have no catalog items)."""
        await self._map.clear_buckets(buckets)

    async def delete_items(self, item_ids: np.ndarray) -> int:
        """Remove items' projections (items gone from the catalog); returns how many existed."""
        return await self._map.delete(item_ids)

    async def get(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (vecs float16 [N, D], found bool [N]) in request order; one round trip."""
        vals, found = await self._map.get(item_ids)
        return vals.view(PROJ_DTYPE).reshape(-1, self.dim), found

    async def read_buckets(self, buckets: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole buckets -> per bucket (ids int64 [m], packed bytes uint8 [m, 2D])."""
        return await self._map.read_buckets(buckets)

    # ---- change feed (scorers' freshness) -------------------------------------------------------
    async def generation(self) -> tuple[int, int]:
        """(gen, floor) of this version's change feed; (0, 0) before any change."""
        raw = await self.client.hmget(self.keys.proj_generation(self.version), ["gen", "floor"])
        return int(raw[0] or 0), int(raw[1] or 0)

    async def note_changed(self, item_ids: np.ndarray, cap: int = CHANGED_CAP) -> int:
        """After re-projecting (or deleting) item_ids [n]: list them under a new generation, then
        publish it. Returns the new generation."""
        gen, floor = await self.generation()
        new = _next_generation(gen)
        ids = np.unique(np.asarray(item_ids, np.int64))
        key = self.keys.proj_changed(self.version)
        for lo in range(0, ids.size, _FEED_CHUNK):
            await self.client.zadd(key, dict.fromkeys(ids[lo:lo + _FEED_CHUNK].tolist(), new))
        n = int(await self.client.zcard(key))
        if n > cap:  # trim the oldest; whoever knew less than what was cut must drop everything
            cut = await self.client.zrange(key, n - cap - 1, n - cap - 1, withscores=True)
            floor = max(floor, int(cut[0][1]))
            await self.client.zremrangebyscore(key, "-inf", floor)
        await self.client.hset(self.keys.proj_generation(self.version), mapping={"gen": new, "floor": floor})
        return new

    async def note_reset(self) -> int:
        """After a run that may have rewritten any projection: a new generation that is also the floor."""
        new = _next_generation((await self.generation())[0])
        await self.client.hset(self.keys.proj_generation(self.version), mapping={"gen": new, "floor": new})
        await self.client.zremrangebyscore(self.keys.proj_changed(self.version), "-inf", new)
        return new

    async def changed_since(self, known: int, gen: int) -> np.ndarray:
        """Ids re-projected in generations (known, gen], int64 [n]."""
        raw = await self.client.zrangebyscore(self.keys.proj_changed(self.version), f"({known}", gen)
        return np.array([int(x) for x in raw], np.int64)

    # ---- progress and completion --------------------------------------------------------------
    async def done_buckets(self) -> dict[int, tuple[int, int]]:
        """bucket -> (count, checksum) of every bucket the projector has finished."""
        raw = await self.client.hgetall(self.keys.proj_done(self.version))
        out = {}
        for b, rec in raw.items():
            count, sm = rec.split(b":")
            out[int(b)] = (int(count), int(sm, 16))
        return out

    async def mark_done(self, records: dict[int, tuple[int, int]]) -> None:
        if records:
            mapping = {b: f"{c}:{s:016x}" for b, (c, s) in records.items()}
            await self.client.hset(self.keys.proj_done(self.version), mapping=mapping)

    async def write_marker_if_complete(self) -> dict[str, Any] | None:
        """When every bucket is done, (re)write the marker from the bucket records; returns it."""
        done = await self.done_buckets()
        if len(done) < self.keys.n_buckets:
            return None
        count, total = 0, 0
        for c, s in done.values():
            count, total = count + c, ck.add(total, s)
        marker = {"version": self.version, "count": count, "checksum": f"{total:016x}", "dim": self.dim,
                  "n_buckets": self.keys.n_buckets, "completed_at": int(time.time() * 1000)}
        await self.client.hset(self.keys.proj_marker(self.version), mapping=marker)
        log.info("projection marker written: %s", marker)
        return marker

    async def read_marker(self) -> dict[str, Any] | None:
        """{"version", "count", "checksum", "dim", "n_buckets", "completed_at"} or None."""
        raw = await self.client.hgetall(self.keys.proj_marker(self.version))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return {"version": d["version"], "count": int(d["count"]), "checksum": d["checksum"],
                "dim": int(d["dim"]), "n_buckets": int(d["n_buckets"]), "completed_at": int(d["completed_at"])}

    async def stored_checksum(self) -> tuple[int, int]:
        """(count, checksum) recomputed from every stored byte of this version (a full read)."""
        count, total = 0, 0
        step = 16
        for lo in range(0, self.keys.n_buckets, step):
            for ids, vals in await self.read_buckets(range(lo, min(lo + step, self.keys.n_buckets))):
                count, total = count + ids.size, ck.add(total, ck.checksum(ids, vals))
        return count, total


def _next_generation(gen: int) -> int:
    """Generations are Unix milliseconds, strictly increasing: a version deleted and projected again
    starts above anything a scorer knew of its previous life (so it reads as a reset, never as 'no news');
    delete_version waits for the clock to pass the deleted generation for that (_outlast)."""
    return max(gen + 1, int(time.time() * 1000))


async def _outlast(gen: int, limit_s: float = 1.0) -> None:
    """Return once the clock (Unix ms) is past generation `gen`. Changes within one millisecond put
    generations ahead of the clock (gen + 1 each), and a version deleted and projected again starts
    from 0: without this its first generation could equal one a scorer still knows (seen on a fast
    host: delete and re-projection in the same millisecond). Gives up after limit_s (a clock set back)."""
    end = time.monotonic() + limit_s
    while int(time.time() * 1000) <= gen:
        if time.monotonic() > end:
            log.warning("clock still at or before generation %d after %.1f s: was it set back?", gen, limit_s)
            return
        await asyncio.sleep(0.001)


async def list_versions(client: Any, keys: Keys) -> list[str]:
    return sorted(v.decode() for v in await client.smembers(keys.versions()))


async def delete_version(client: Any, keys: Keys, version: str) -> int:
    """Garbage-collect one version: marker first (it stops being servable), then progress and
    every bucket. Returns the number of keys removed. Idempotent."""
    check_version(version)
    last = int(await client.hget(keys.proj_generation(version), "gen") or 0)
    removed = int(await client.unlink(keys.proj_marker(version)))
    removed += int(await client.unlink(keys.proj_done(version)))
    removed += int(await client.unlink(keys.proj_changed(version)))
    removed += int(await client.unlink(keys.proj_generation(version)))
    await _outlast(last)  # the version projected again must start above every generation it had
    removed += await BucketHashMap(client, keys.proj_buckets(version), 1).delete_all()
    await client.srem(keys.versions(), version)
    log.info("deleted projections of version %s (%d keys)", version, removed)
    return removed
