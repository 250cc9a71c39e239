"""Shape buckets: every size has a bucket, CPU buckets are fine-grained, GPU ones are powers of two."""
from __future__ import annotations

import pytest
import torch

from service.engine.buckets import bucket_for, serving_buckets
from service.engine.forward import collate, synthetic_inputs
from service.engine.slot import ModelSlot
from tests.twin_factory import tiny_model


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


def _cpu_slot() -> ModelSlot:
    model = tiny_model().eval()
    return ModelSlot(version="v", model=model, manifest=None, device=torch.device("cpu"), autocast=None, seq_len=1000,
                     seq_buckets=[64, 128, 1000], cand_buckets=[8, 16, 128], behaviors=None, catalog=None,
                     local_cache=None, user_cache=None, catalog_cache=None)


def test_cpu_batches_pad_to_their_largest_request_not_to_a_bucket():
    slot = _cpu_slot()
    one = collate(slot, [synthetic_inputs(slot, 300, 20)])
    assert one.seq_mask.shape == (1, 300) and one.cand.shape[:2] == (1, 20)
    two = collate(slot, [synthetic_inputs(slot, 300, 20), synthetic_inputs(slot, 500, 5, seed=1)])
    assert two.seq_mask.shape == (2, 500) and two.cand.shape[:2] == (2, 20)
    assert two.seq_mask.sum(1).tolist() == [300, 500] and two.cand_mask.sum(1).tolist() == [20, 5]
    tiny = collate(slot, [synthetic_inputs(slot, 10, 3)])  # floored at the smallest buckets
    assert tiny.seq_mask.shape == (1, 64) and tiny.cand.shape[:2] == (1, 8)
    with pytest.raises(ValueError):
        collate(slot, [synthetic_inputs(slot, 1001, 3)])  # beyond the largest bucket: refused
