"""Shape buckets: every size has a bucket, CPU buckets are fine-grained, GPU ones are powers of two."""
from __future__ import annotations

import pytest

from service.engine.buckets import bucket_for, serving_buckets


def test_cpu_buckets_waste_at_most_one_eighth_of_an_octave():
    b = serving_buckets(64, 10_000, "cpu", align=64)
    assert b[-1] == 10_000 and b == sorted(set(b))
    for n in range(65, 10_001, 37):
        assert n <= bucket_for(n, b) <= max(n * 1.2, n + 64)


def test_gpu_buckets_are_powers_of_two_closed_by_the_largest():
    assert serving_buckets(64, 10_000, "cuda") == [64, 128, 256, 512, 1024, 2048, 4096, 8192, 10_000]


def test_a_size_beyond_the_largest_bucket_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        bucket_for(10_001, serving_buckets(64, 10_000, "cpu"))
