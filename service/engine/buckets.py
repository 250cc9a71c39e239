"""Shape buckets: batches are padded to a few fixed L and C sizes so the model sees a small, warmed
set of shapes (what CUDA kernels / compiled graphs specialise on) instead of one per request.

Example: L buckets for max_seq_len 10_000 -> [64, 128, ..., 8192, 10000]; a user with 3,000
behaviors is padded to 4,096, one with 20,000 was already cut to 10,000 by the read.
"""
from __future__ import annotations

import bisect


def default_buckets(smallest: int, largest: int) -> list[int]:
    """Powers of two from `smallest` while below `largest`, then `largest` itself."""
    if smallest < 1 or largest < 1:
        raise ValueError(f"bucket sizes must be >= 1, got smallest={smallest}, largest={largest}")
    out, b = [], smallest
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return out


def clip_buckets(buckets: list[int], largest: int) -> list[int]:
    """Configured buckets, cut at `largest` and closed by it (so every size up to it has a bucket)."""
    kept = [b for b in buckets if b < largest]
    return kept + [largest]


def bucket_for(n: int, buckets: list[int]) -> int:
    """Smallest bucket >= n (n = 0 maps to the smallest bucket)."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"size {n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]
