"""Shape buckets: batches are padded to a few fixed L and C sizes so the model sees a small, warmed
set of shapes (what CUDA kernels / compiled graphs specialise on) instead of one per request.

Example: L buckets for max_seq_len 10_000 -> [64, 128, ..., 8192, 10000]; a user with 3,000
behaviors is padded to 4,096, one with 20,000 was already cut to 10,000 by the read.

On the CPU nothing is compiled or specialised per shape, and the model's cost is linear in the
padded L and C, so power-of-two padding is up to 2x compute for nothing (W1's 100 candidates padded
to 128 cost 28% more). `serving_buckets` therefore uses 8 steps per octave there (<= 12.5% padding:
100 -> 104, 3,000 -> 3,072); the few dozen shapes only cost warm-up time, which is cheap on the CPU.
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


def fine_buckets(smallest: int, largest: int, steps_per_octave: int = 8, align: int = 8) -> list[int]:
    """Sizes from `smallest` up to `largest` (included): within [2^j, 2^(j+1)) the step is
    max(align, 2^j / steps_per_octave), so padding is at most 1/steps_per_octave of the size above
    align * steps_per_octave, and at most `align` entries below it. Sizes are multiples of `align`.

    fine_buckets(8, 128) -> [8, 16, 24, ..., 120, 128]
    fine_buckets(64, 10_000, align=64) -> [64, 128, ..., 1024, 1152, ..., 8192, 9216, 10000]
    """
    if smallest < 1 or largest < 1 or steps_per_octave < 1 or align < 1:
        raise ValueError(f"bucket parameters must be >= 1, got smallest={smallest}, largest={largest}, "
                         f"steps_per_octave={steps_per_octave}, align={align}")
    out, b = [], -(-smallest // align) * align
    while b < largest:
        out.append(b)
        octave = 1 << (b.bit_length() - 1)  # 2^j <= b
        b += max(align, octave // steps_per_octave // align * align)
    out.append(largest)
    return out


def serving_buckets(smallest: int, largest: int, device_type: str, align: int = 8) -> list[int]:
    """Default buckets of a device: powers of two on accelerators (few shapes to warm and specialise
    on), 8 steps per octave on the CPU (padding is pure extra compute there, see the module doc)."""
    if device_type == "cpu":
        return fine_buckets(smallest, largest, 8, align)
    return default_buckets(smallest, largest)


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
