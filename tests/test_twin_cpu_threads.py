"""twin.cpu_threads: slices cover the range in order on several threads; the model's scores do not
depend on the thread count (alpha's GEMM split by heads, the top-k by rows)."""
from __future__ import annotations

import threading

import pytest
import torch

from tests.twin_factory import serve_batch_from, tiny_model, train_batch
from twin.kernels import cpu_threads


@pytest.fixture
def three_threads():
    cpu_threads.set_cpu_threads(3)
    yield
    cpu_threads.set_cpu_threads(1)


def _record(lo: int, hi: int) -> tuple[int, int, int]:
    return lo, hi, threading.get_ident()


def test_split_covers_the_range_in_order_on_several_threads(three_threads):
    together = threading.Barrier(3, timeout=10)  # breaks unless all three slices run at the same time

    def slice_(lo: int, hi: int) -> tuple[int, int, int]:
        together.wait()
        return _record(lo, hi)

    parts = cpu_threads.split(10, 3, slice_)
    assert [(lo, hi) for lo, hi, _ in parts] == [(0, 3), (3, 6), (6, 10)]
    assert parts[0][2] == threading.get_ident()  # the caller runs the first slice
    assert len({t for *_, t in parts}) == 3


def test_a_split_inside_a_slice_runs_serially_instead_of_waiting_for_a_busy_pool(three_threads):
    import concurrent.futures

    def outer(lo: int, hi: int) -> list:
        return cpu_threads.split(hi - lo, 1, _record)  # e.g. the ESU kernel inside a candidate slice

    with concurrent.futures.ThreadPoolExecutor(1) as ex:  # a deadlock would hang: bound the wait
        parts = ex.submit(cpu_threads.split, 30, 1, outer).result(timeout=10)
    assert [len(inner) for inner in parts] == [1, 1, 1]  # every nested split ran as one slice


def test_slices_run_under_the_callers_grad_mode(three_threads):
    with torch.inference_mode():
        assert all(cpu_threads.split(3, 1, lambda lo, hi: torch.is_inference_mode_enabled()))
    with torch.no_grad():
        assert not any(cpu_threads.split(3, 1, lambda lo, hi: torch.is_grad_enabled()))


def test_split_respects_the_minimum_slice_and_serial(three_threads):
    assert [(lo, hi) for lo, hi, _ in cpu_threads.split(5, 3, _record)] == [(0, 5)]  # 5 // 3 = 1 slice
    with cpu_threads.serial():
        assert [(lo, hi) for lo, hi, _ in cpu_threads.split(10, 1, _record)] == [(0, 10)]
    assert len(cpu_threads.split(10, 1, _record)) == 3  # serial() ends with its block


def test_scores_do_not_depend_on_the_thread_count():
    model = tiny_model(seed=2).eval()
    b = serve_batch_from(model, train_batch(B=3, L=900, lengths=[900, 400, 35], seed=4))
    with torch.inference_mode():
        alone = model.score(b, explain=True)
        cpu_threads.set_cpu_threads(2)
        try:
            split = model.score(b, explain=True)
        finally:
            cpu_threads.set_cpu_threads(1)
    assert torch.equal(alone.scores, split.scores)
    assert torch.equal(alone.explain.positions, split.explain.positions)
