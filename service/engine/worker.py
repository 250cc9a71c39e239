"""The inference thread: one per device, the only thread that runs the model.

The event loop never touches torch (except the cache's miss path): it hands callables to this
thread and awaits them, as vLLM's front end awaits its engine core.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from service.tasks import bounded
from twin.kernels.cpu_threads import set_cpu_threads

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a loud error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def default_threads(device: torch.device) -> int:
    """Intra-op threads of the inference thread when not configured.

    CPU: half the cores (1 on a 2-core host). The event loop (HTTP, JSON, Redis, cache gathers) needs
    a core of its own while a batch runs, and OpenMP's fork-join barriers degrade badly when one
    of their threads is descheduled: measured at W1 on a 2-core host shared with other jobs,
    model.score took 44 ms on 1 thread and 70-640 ms on 2. CUDA: 1 (the host thread only launches).
    """
    if device.type != "cpu":
        return 1
    return max(1, (os.cpu_count() or 2) // 2)


def default_parallel_threads(device: torch.device) -> int:
    """CPU: plain threads one batch's work is spread over, when not configured: every core. A batch of
    several requests runs them on that many threads at once (each on `threads` torch threads); a lone
    request splits its alpha GEMM and top-k over them (twin.kernels.cpu_threads). Plain threads, not an
    OpenMP team: when the event loop or another job holds a core, the work of the thread that waits is
    late, but nothing spins at a barrier. Accelerators batch on the device: 1."""
    return max(1, os.cpu_count() or 1) if device.type == "cpu" else 1


class InferenceWorker:
    def __init__(self, device: torch.device, torch_threads: int | None = None, parallel_threads: int | None = None):
        self.device = device
        self.threads = torch_threads or default_threads(device)
        self.parallel = parallel_threads or default_parallel_threads(device)
        set_cpu_threads(self.parallel if device.type == "cpu" else 1)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"twin-infer-{device.type}",
                                        initializer=self._init_thread)
        # The threads that run a CPU batch's other requests next to the inference thread (forward.run_batch).
        self.branches = (ThreadPoolExecutor(self.parallel - 1, thread_name_prefix="twin-branch",
                                            initializer=torch.set_num_threads, initargs=(self.threads,))
                         if device.type == "cpu" and self.parallel > 1 else None)
        self.closed = False
        self.last_ok = 0.0  # time.monotonic() of the last call that completed on the device

    def _init_thread(self) -> None:
        # torch's thread count is per OS thread (OpenMP): this sets the inference thread's only.
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.closed:
            raise RuntimeError("inference worker is closed")
        out = await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        self.last_ok = time.monotonic()
        return out

    def _probe(self) -> bool:
        x = torch.ones(8, device=self.device)
        return float((x * 2).sum().item()) == 16.0

    async def probe(self, timeout_s: float, fresh_s: float = 0.0) -> bool:
        """The device answers: a batch completed within `fresh_s`, or a tiny op does within
        `timeout_s` (queued behind any running batch, so a busy device is not called dead)."""
        if time.monotonic() - self.last_ok < fresh_s:
            return True
        try:
            return await bounded(self.call(self._probe), timeout_s)
        except Exception as e:  # noqa: BLE001 - any failure means "device not answering"
            log.warning("device probe failed: %r", e)
            return False

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.branches is not None:
            self.branches.shutdown(wait=True, cancel_futures=True)
