"""Per-user behavior logs in Redis: capped, append-only, idempotent by event id.

Layout (docs/redis_layout.md), one hash tag per user so a user's keys share a cluster slot:
    P:user:{u<id>}:log   string  packed records oldest -> newest,
                                 record = item_id <i8 | ts <i8 | cross <f4[J_s]  (16 + 4*J_s bytes)
    P:user:{u<id>}:eids  zset    the user's most recent event ids (dedup window), score = sequence
    P:user:{u<id>}:n     string  behaviors ever appended (the user's full history length)

Append = one Lua script per user (atomic on the server): skip event ids already in the window,
APPEND the new records, bump the count, trim the log to the newest `cap` records once it exceeds
cap * (1 + 1/8) (amortized O(1) per event), trim the window to `dedup_window` ids and refresh
its TTL. Reads are one pipelined GETRANGE of the newest n records + GET of the count per user, or,
for a caller that holds the user's sequence already (service user cache), `read_since`: one Lua
script that atomically returns the count and only the records appended since a known count.

Delivery semantics: clients deliver at least once (they retry until acknowledged, and redis-py
retries on connection errors); re-delivered events whose ids are still in the window are
dropped, so storage is effectively-once within the window (the user's last `dedup_window`
events and `dedup_ttl_s` seconds since their last event). The HTTP layer acknowledges only
after `append` returned, i.e. after Redis executed the script.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from redis.exceptions import NoScriptError

from cache.layout import Keys, behavior_dtype

log = logging.getLogger(__name__)

MAX_EVENT_ID_BYTES = 128

# KEYS: log, eids, count. ARGV: record size, cap, trim threshold (records), dedup window,
# dedup TTL seconds (0 = none), then (event id, packed record) pairs in append order.
_APPEND_LUA = """
local rec, cap, hard = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dmax, dttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local parts, seen, new = {}, {}, 0
for i = 6, #ARGV, 2 do
  local eid = ARGV[i]
  if not seen[eid] and not redis.call('ZSCORE', KEYS[2], eid) then
    seen[eid] = true
    new = new + 1
    parts[new] = ARGV[i + 1]
    redis.call('ZADD', KEYS[2], seq + new, eid)
  end
end
if new > 0 then
  local len = redis.call('APPEND', KEYS[1], table.concat(parts))
  redis.call('INCRBY', KEYS[3], new)
  if len > hard * rec then
    redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], -cap * rec, -1))
  end
  local nz = redis.call('ZCARD', KEYS[2])
  if nz > dmax then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, nz - dmax - 1) end
end
if dttl > 0 and new > 0 then redis.call('EXPIRE', KEYS[2], dttl) end
return new
"""

# KEYS: log, count. ARGV: record size, known total (-1 = none), n (window, records, >= 1).
# Returns {total, full, bytes}: full = 1 -> the newest n records (the caller holds nothing usable:
# none known, the count went down, or n or more were appended); full = 0 -> the d = total - known
# records appended since, preceded by the one record just older than them (the anchor), if any.
_SINCE_LUA = """
local rec, known, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local d = total - known
if known < 0 or d < 0 or d >= n then
  return {total, 1, redis.call('GETRANGE', KEYS[1], -n * rec, -1)}
end
return {total, 0, redis.call('GETRANGE', KEYS[1], -(d + 1) * rec, -1)}
"""


@dataclass(frozen=True)
class Event:
    """One behavior as a client reports it. cross: float32 [J_s] stored cross values."""

    event_id: str
    user_id: int
    item_id: int
    ts: int
    cross: np.ndarray


@dataclass
class BehaviorBlock:
    """The newest m behaviors of one user, newest FIRST. total = behaviors ever appended
    (the full history length, may exceed the cap and m)."""

    item_id: np.ndarray  # int64 [m]
    ts: np.ndarray  # int64 [m]
    cross: np.ndarray  # float32 [m, J_s]
    total: int

    def __len__(self) -> int:
        return int(self.item_id.size)


@dataclass
class SinceRead:
    """What read_since saw. full: `block` is the newest window; else `block` holds only the records
    appended since the caller's known total (maybe none). Both newest first, block.total = total now.
    anchor: the packed record just older than the delta (b"" = the log holds nothing older, None =
    it holds fewer records than the delta: not the log the caller knew); None when full.
    newest: the packed newest record of the log (b"" when empty), the next read_since's anchor."""

    block: BehaviorBlock
    full: bool
    anchor: bytes | None
    newest: bytes


class BehaviorStore:
    def __init__(self, client: Any, keys: Keys, n_cross: int, cap: int = 100_000,
                 dedup_window: int = 1_000, dedup_ttl_s: int = 86_400) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if dedup_window < 1:
            raise ValueError(f"dedup_window must be >= 1, got {dedup_window}")
        if dedup_ttl_s < 0:
            raise ValueError(f"dedup_ttl_s must be >= 0, got {dedup_ttl_s}")
        self.client = client
        self.keys = keys
        self.n_cross = n_cross
        self.cap = cap
        self.dedup_window = dedup_window
        self.dedup_ttl_s = dedup_ttl_s
        self.dtype = behavior_dtype(n_cross)
        self.rec = self.dtype.itemsize
        self._trim_at = cap + max(1, math.ceil(cap / 8))
        self._shas: dict[str, str] = {}  # script source -> SHA1 the server knows it by

    # ---- writes ---------------------------------------------------------------------------
    def _check(self, e: Event) -> None:
        if not isinstance(e.event_id, str) or not e.event_id or len(e.event_id.encode()) > MAX_EVENT_ID_BYTES:
            raise ValueError(f"event_id must be a non-empty string of <= {MAX_EVENT_ID_BYTES} bytes, got {e.event_id!r}")
        for name in ("user_id", "item_id", "ts"):
            v = getattr(e, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= int(v) < 2**63:
                raise ValueError(f"event {e.event_id!r}: {name} must be an integer in [0, 2^63), got {v!r}")
        cross = np.asarray(e.cross, dtype=np.float32)
        if cross.shape != (self.n_cross,):
            raise ValueError(f"event {e.event_id!r}: cross must have shape ({self.n_cross},), got {cross.shape}")
        if not np.all(np.isfinite(cross)):
            raise ValueError(f"event {e.event_id!r}: cross values must be finite, got {cross.tolist()}")

    def _pack(self, events: Sequence[Event]) -> np.ndarray:
        recs = np.empty(len(events), self.dtype)
        recs["item_id"] = [int(e.item_id) for e in events]
        recs["ts"] = [int(e.ts) for e in events]
        recs["cross"] = np.asarray([np.asarray(e.cross, np.float32) for e in events]).reshape(len(events), self.n_cross)
        return recs

    async def append(self, events: Sequence[Event]) -> int:
        """Store events atomically per user, idempotent by event_id; returns how many were new.
        Within one user's batch, events are appended in ts order. Raises on Redis failure
        (nothing is acknowledged then; a retry of the same batch is safe)."""
        for e in events:
            self._check(e)
        if not events:
            return 0
        by_user: dict[int, list[Event]] = {}
        for e in events:
            by_user.setdefault(int(e.user_id), []).append(e)
        calls: list[tuple[list[bytes], list[Any]]] = []
        for uid, evs in by_user.items():
            evs = sorted(evs, key=lambda e: int(e.ts))  # stable: equal ts keep arrival order
            buf = self._pack(evs).tobytes()
            args: list[Any] = [self.rec, self.cap, self._trim_at, self.dedup_window, self.dedup_ttl_s]
            for i, e in enumerate(evs):
                args += [e.event_id, buf[i * self.rec:(i + 1) * self.rec]]
            calls.append(([self.keys.user_log(uid), self.keys.user_event_ids(uid), self.keys.user_count(uid)], args))
        return sum(int(r) for r in await self._eval(_APPEND_LUA, calls))

    async def _eval(self, script: str, calls: list[tuple[list[bytes], list[Any]]]) -> list[Any]:
        """EVALSHA `script` once per (keys, args) call, one pipelined round trip; results in call order.
        NOSCRIPT (server restarted or flushed its script cache) -> load it and re-run those calls once."""
        sha = self._shas.get(script) or await self._load_script(script)
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                # execute_command, not pipe.evalsha: redis-py blocks the latter in cluster
                # pipelines although EVALSHA routes fine by its (single-slot) keys.
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            retry = []
            for i, res in zip(todo, results):
                if isinstance(res, NoScriptError) and attempt == 0:
                    retry.append(i)
                elif isinstance(res, Exception):
                    raise res
                else:
                    out[i] = res
            if not retry:
                break
            todo, sha = retry, await self._load_script(script)
        return out

    async def _eval_one(self, script: str, keys: list[bytes], args: list[Any]) -> Any:
        """One EVALSHA as a plain command: on the hot read path a pipeline's own overhead is a
        sizable share of the round trip. The cluster client routes it by its keys."""
        sha = self._shas.get(script) or await self._load_script(script)
        try:
            return await self.client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # server restarted or flushed its script cache
            return await self.client.execute_command("EVALSHA", await self._load_script(script), len(keys),
                                                     *keys, *args)

    async def _load_script(self, script: str) -> str:
        self._shas[script] = await self.client.script_load(script)
        return self._shas[script]

    async def write_history(self, user_ids: Sequence[int], blocks: Sequence[BehaviorBlock]) -> None:
        """Bulk load (seeding, backfill): REPLACE each user's log with `block` (newest first, as
        read_newest returns it; only the newest `cap` are kept) and set its count to
        block.total. Bypasses event-id dedup; one pipelined round trip."""
        if len(user_ids) != len(blocks):
            raise ValueError(f"got {len(user_ids)} user ids for {len(blocks)} blocks")
        pipe = self.client.pipeline(transaction=False)
        for uid, blk in zip(user_ids, blocks):
            m = min(len(blk), self.cap)
            recs = np.empty(m, self.dtype)
            recs["item_id"] = blk.item_id[:m][::-1]  # stored oldest -> newest
            recs["ts"] = blk.ts[:m][::-1]
            recs["cross"] = np.asarray(blk.cross, np.float32)[:m][::-1].reshape(m, self.n_cross)
            if blk.total < len(blk):
                raise ValueError(f"user {uid}: total {blk.total} < {len(blk)} behaviors given")
            pipe.set(self.keys.user_log(uid), recs.tobytes())
            pipe.set(self.keys.user_count(uid), int(blk.total))
            pipe.unlink(self.keys.user_event_ids(uid))
        await pipe.execute()

    # ---- reads -----------------------------------------------------------------------------
    async def read_newest(self, user_ids: Sequence[int], n: int) -> list[BehaviorBlock]:
        """The newest min(n, cap) behaviors of each user, newest first; one round trip.
        An unknown user gives an empty block with total 0."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        m = min(n, self.cap)
        pipe = self.client.pipeline(transaction=False)
        for uid in user_ids:
            if m:
                pipe.getrange(self.keys.user_log(uid), -m * self.rec, -1)
            pipe.get(self.keys.user_count(uid))
        res = await pipe.execute()
        out = []
        step = 2 if m else 1
        for i, uid in enumerate(user_ids):
            raw = res[i * step] if m else b""
            count = res[i * step + step - 1]
            out.append(self._block(uid, raw, int(count) if count is not None else 0))
        return out

    async def read_since(self, user_id: int, known_total: int, n: int) -> SinceRead:
        """One round trip (a Lua script, so the count and the records are one atomic snapshot).

        known_total = the total of a sequence the caller holds (-1 = none). When 0 <= d = total -
        known_total < min(n, cap): the d records appended since, newest first, and the one record
        just older than them (`anchor`), which the caller compares with its newest record to detect a
        history rewritten under the same count. Otherwise (-1, the count went down, d >= n): the
        newest min(n, cap) records, as read_newest reads them (`full`)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        m = min(n, self.cap)
        keys = [self.keys.user_log(user_id), self.keys.user_count(user_id)]
        total, full, raw = await self._eval_one(_SINCE_LUA, keys, [self.rec, int(known_total), m])
        total, full = int(total), bool(full)
        newest = raw[-self.rec:] if raw else b""
        if full:
            return SinceRead(self._block(user_id, raw, total), True, None, newest)
        d = total - known_total
        if len(raw) == (d + 1) * self.rec:
            return SinceRead(self._block(user_id, raw[self.rec:], total), False, raw[:self.rec], newest)
        # the log holds only the d new records (anchor b""), or fewer (not the log the caller knew: None)
        anchor = b"" if len(raw) == d * self.rec else None
        return SinceRead(self._block(user_id, raw, total), False, anchor, newest)

    def _block(self, user_id: int, raw: bytes, total: int) -> BehaviorBlock:
        """Packed records, oldest -> newest, as stored -> a BehaviorBlock newest first."""
        if len(raw) % self.rec:
            raise ValueError(f"behavior log of user {user_id} has {len(raw)} bytes, not a multiple of {self.rec}")
        recs = np.frombuffer(raw, self.dtype)[::-1]  # newest first
        return BehaviorBlock(item_id=recs["item_id"].copy(), ts=recs["ts"].copy(),
                             cross=recs["cross"].reshape(-1, self.n_cross).copy(), total=total)
