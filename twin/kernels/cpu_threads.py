"""Plain threads that split the CPU work of one forward (alpha's GEMM by heads, the top-k by rows).

Not OpenMP: torch and numpy release the GIL in the array ops these threads run, so the slices run in
parallel; and unlike an OpenMP team nothing spins at a barrier, so a thread descheduled on a busy
host delays only its own slice. Process-wide, like torch.set_num_threads; 1 (the default) = serial.
Results never depend on the thread count: every slice is computed exactly as it would be alone.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads = 1
_local = threading.local()  # .serial: this thread runs its slices alone (see serial)


def set_cpu_threads(n: int) -> None:
    """Threads, the caller's included, that split() spreads slices over."""
    global _pool, _threads
    if n < 1:
        raise ValueError(f"CPU threads must be >= 1, got {n}")
    with _lock:
        if n != _threads:
            old, _pool = _pool, (ThreadPoolExecutor(n - 1, thread_name_prefix="twin-cpu", initializer=_pool_thread_init)
                                 if n > 1 else None)
            _threads = n
            if old is not None:
                old.shutdown(wait=False)


def _pool_thread_init() -> None:
    # each pool thread is one core's worth of work: no OpenMP team of its own, and a split() called
    # from inside one of its slices runs serially (it would otherwise wait for a pool thread that is
    # itself, or another one busy with a slice of the same call: a deadlock)
    torch.set_num_threads(1)
    _local.serial = True


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Within the block the calling thread does not split its work: for threads that are already one
    of several running side by side (a batch's requests), where splitting again only oversubscribes."""
    prev = getattr(_local, "serial", False)
    _local.serial = True
    try:
        yield
    finally:
        _local.serial = prev


def split(total: int, min_per_thread: int, fn: Callable[[int, int], T]) -> list[T]:
    """fn(lo, hi) over contiguous slices of range(total), at most one per thread and each at least
    min_per_thread long; the caller runs the first. -> the results in slice order."""
    n = 1 if getattr(_local, "serial", False) else min(_threads, total // max(1, min_per_thread))
    if n < 2:
        return [fn(0, total)]
    bounds = [total * i // n for i in range(n + 1)]
    # Grad and inference modes are per thread: the slices run under the caller's.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(lo: int, hi: int) -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(lo, hi)

    with _lock:
        if _pool is None:  # reconfigured to serial meanwhile
            return [fn(0, total)]
        futures = [_pool.submit(run, bounds[i], bounds[i + 1]) for i in range(1, n)]
    with serial():  # the caller's slice, like the pool's, does not split again
        first = fn(bounds[0], bounds[1])
    return [first] + [f.result() for f in futures]
