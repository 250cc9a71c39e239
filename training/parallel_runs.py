"""Independent trainings in worker processes: one torch thread each, and glibc keeping its freed heap.

Exists for speed only: at the same thread count a job gives the same bits as in one process (1 and 2
threads differ in float summation order, e.g. TWIN on categories 0.8326 vs 0.8341 mean AUC, within
its spread of 0.017).
Measured on the 2-core box, TWIN on MovieLens ml-latest-small, one epoch (docs/benchmarks.md,
"2026-12-02 (noon)"):
  * 2 torch threads 51.6 s, 1 thread 44.5 s, two 1-thread runs side by side 50.1 s each: the model's
    ops are too small to split across cores, so two single-thread workers do ~2x the work of one
    two-thread process;
  * glibc serves blocks above its mmap threshold (at most 32 MiB by default) with fresh mmap()s and
    unmaps them on free, so every step page-faults its temporaries in again (18 s of system time in
    that 61 s run); with the thresholds below the epoch took 34.6 s, SDIM's 55 -> 36 s and its
    validation pass 38 -> 19 s. glibc reads these variables when a process starts, so they are set
    for the spawned workers. (mallopt() at run time takes large thresholds too: 1 GiB checked, a 188 MB
    torch.zeros 94 -> 9 ms; but its int argument stops at 2 GiB, below the 4 / 8 GiB measured in the
    full run, so the measured configuration is the one kept.) The cost: a worker's RSS stays at its
    high-water mark (10.1 GB in the full run).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

# MALLOC_MMAP_THRESHOLD_ alone or MALLOC_TRIM_THRESHOLD_ alone changed nothing measurable; both are needed.
KEEP_HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(8 << 30)}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_parallel(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, threads: int = 1
                 ) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Yield (index into jobs, fn(*jobs[index]), None) as each job finishes, or (index, None, the
    exception) when it raised or its worker died (a killed worker fails the jobs still queued too),
    from `workers` spawned processes of `threads` torch threads each. Jobs start in the order given
    (put the longest first). fn must be importable by name (a module-level function). The malloc
    variables (a value already in the environment is kept) reach only the workers."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter reads the malloc variables at start
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        # the pool spawns its workers inside submit() (one per submit until `workers` run, none later:
        # no max_tasks_per_child), so the variables are in the environment exactly while they start
        added = {k: v for k, v in KEEP_HEAP_ENV.items() if k not in os.environ}
        os.environ.update(added)
        try:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        finally:
            for k in added:
                del os.environ[k]
        for f in as_completed(futures):
            e = f.exception()
            yield futures[f], None if e else f.result(), e
