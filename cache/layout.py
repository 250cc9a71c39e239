"""Every Redis key the project writes, as exact bytes, plus the packed value encodings.

The written spec is docs/redis_layout.md; tests/test_cache_layout.py pins the bytes. In short
(prefix P = "twin", version V, bucket b = item_id % n_buckets, user u):

    P:v:V:proj:{b<b>}   hash  field = item id (decimal ASCII) -> float16[D] little-endian
    P:v:V:marker        hash  completion marker of version V (count, checksum, dim, ...)
    P:v:V:done          hash  projector progress: bucket -> "count:checksum"
    P:v:V:gen           hash  change generation of V's projections: gen, floor (scorers poll it)
    P:v:V:changed       zset  item id -> generation of its last re-projection (the change feed)
    P:versions          set   versions that have projection keys (for garbage collection)
    P:item:{b<b>}       hash  field = item id (decimal ASCII) -> int64[F_h] little-endian
    P:user:{u<u>}:log   string  packed behavior records, oldest first
    P:user:{u<u>}:eids  zset  recent event ids (dedup window), score = sequence number
    P:user:{u<u>}:n     string  number of behaviors ever appended (the user's history length)

The `{...}` parts are Redis Cluster hash tags: one bucket's keys (catalog and every version's
projections) share a slot, and one user's three keys share a slot, so every multi-key operation
(a user's Lua append) and every multi-field read (HMGET on one bucket) stays inside one slot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Value encodings (little-endian, packed, no padding).
PROJ_DTYPE = np.dtype("<f2")
RAW_DTYPE = np.dtype("<i8")


def behavior_dtype(n_cross: int) -> np.dtype:
    """One behavior record: item_id <i8, ts <i8, cross <f4[n_cross]; 16 + 4*n_cross bytes."""
    if n_cross < 0:
        raise ValueError(f"n_cross must be >= 0, got {n_cross}")
    return np.dtype([("item_id", "<i8"), ("ts", "<i8"), ("cross", "<f4", (n_cross,))])


def check_version(version: str) -> str:
    """Versions become part of key names: letters, digits, '.', '_', '-' only (no ':' or braces)."""
    if not isinstance(version, str) or not _NAME.match(version):
        raise ValueError(f"model version {version!r} must match {_NAME.pattern}")
    return version


def check_ids(ids: np.ndarray, what: str = "item_ids") -> np.ndarray:
    """int64 [N] in [0, 2^63); raises naming the first bad value."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} must be in [0, 2^63), got {int(arr.min())}")
    return arr


@dataclass(frozen=True)
class Keys:
    """Key names for one deployment. `prefix` isolates deployments (and tests) on a shared Redis;
    `n_buckets` is fixed for the life of the data (changing it re-homes every item).

    Why buckets: reading 10,000 random projections is one pipelined HMGET per touched bucket
    (at most n_buckets commands, ~40 fields each with 256 buckets) instead of 10,000 GETs, and
    on a cluster every HMGET is single-slot. See docs/redis_layout.md for the measurements.
    """

    prefix: str = "twin"
    n_buckets: int = 256

    def __post_init__(self) -> None:
        if not _NAME.match(self.prefix):
            raise ValueError(f"key prefix {self.prefix!r} must match {_NAME.pattern}")
        if not 1 <= self.n_buckets <= 16384:
            raise ValueError(f"n_buckets must be in [1, 16384], got {self.n_buckets}")

    # ---- item buckets ------------------------------------------------------------------------
    def bucket_of(self, item_ids: np.ndarray) -> np.ndarray:
        """int64 [N] -> bucket int64 [N]"""
        return np.asarray(item_ids, dtype=np.int64) % self.n_buckets

    def proj_bucket(self, version: str, bucket: int) -> bytes:
        return f"{self.prefix}:v:{check_version(version)}:proj:{{b{int(bucket)}}}".encode()

    def proj_buckets(self, version: str) -> list[bytes]:
        """All bucket keys of one version, index = bucket."""
        base = f"{self.prefix}:v:{check_version(version)}:proj:"
        return [f"{base}{{b{b}}}".encode() for b in range(self.n_buckets)]

    def proj_marker(self, version: str) -> bytes:
        return f"{self.prefix}:v:{check_version(version)}:marker".encode()

    def proj_done(self, version: str) -> bytes:
        return f"{self.prefix}:v:{check_version(version)}:done".encode()

    def proj_generation(self, version: str) -> bytes:
        return f"{self.prefix}:v:{check_version(version)}:gen".encode()

    def proj_changed(self, version: str) -> bytes:
        return f"{self.prefix}:v:{check_version(version)}:changed".encode()

    def versions(self) -> bytes:
        return f"{self.prefix}:versions".encode()

    def item_bucket(self, bucket: int) -> bytes:
        return f"{self.prefix}:item:{{b{int(bucket)}}}".encode()

    def item_buckets(self) -> list[bytes]:
        return [f"{self.prefix}:item:{{b{b}}}".encode() for b in range(self.n_buckets)]

    # ---- users -------------------------------------------------------------------------------
    def user_log(self, user_id: int) -> bytes:
        return f"{self.prefix}:user:{{u{int(user_id)}}}:log".encode()

    def user_event_ids(self, user_id: int) -> bytes:
        return f"{self.prefix}:user:{{u{int(user_id)}}}:eids".encode()

    def user_count(self, user_id: int) -> bytes:
        return f"{self.prefix}:user:{{u{int(user_id)}}}:n".encode()

    def match_all(self) -> str:
        """SCAN pattern for every key of this prefix (tests, cleanup)."""
        return f"{self.prefix}:*"


def group_by_bucket(item_ids: np.ndarray, n_buckets: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Sort positions by bucket.

    Returns (order int64 [N], groups) where ids[order] is bucket-sorted and each group is
    (bucket, start, end) into that order. Vectorized: one stable argsort, no per-id Python work.
    """
    buckets = np.asarray(item_ids, dtype=np.int64) % n_buckets  # [N]
    order = np.argsort(buckets, kind="stable")
    sb = buckets[order]
    if sb.size == 0:
        return order, []
    cuts = np.flatnonzero(sb[1:] != sb[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [sb.size])).tolist()
    return order, [(int(sb[s]), s, e) for s, e in zip(starts, ends)]
