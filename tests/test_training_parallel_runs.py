"""Worker processes of `make reproduce`: every job's result comes back under its own index, the workers
start with glibc's heap kept and the asked-for torch threads, and a failing or dying job is reported
as that job's error instead of ending the run."""
from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

from training.parallel_runs import KEEP_HEAP_ENV, run_parallel


def worker_view(tag: int) -> tuple[int, dict[str, str | None], int, int]:
    import torch

    return tag, {k: os.environ.get(k) for k in KEEP_HEAP_ENV}, torch.get_num_threads(), os.getpid()


def fail_if_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return 10 * x


def die() -> None:
    os._exit(3)  # what the OOM killer leaves behind: no exception, no result


def test_each_result_comes_back_under_its_index_from_spawned_workers_with_the_heap_kept(monkeypatch):
    for k in KEEP_HEAP_ENV:
        monkeypatch.delenv(k, raising=False)
    out = {i: (r, e) for i, r, e in run_parallel(worker_view, [(t,) for t in (7, 8, 9)], workers=2, threads=1)}
    assert sorted(out) == [0, 1, 2]
    assert all(e is None for _, e in out.values())
    assert [out[i][0][0] for i in range(3)] == [7, 8, 9]  # index i holds job i's result
    for _, env, threads, pid in (r for r, _ in out.values()):
        assert env == KEEP_HEAP_ENV  # set before the worker started: glibc reads them only then
        assert threads == 1
        assert pid != os.getpid()
    assert not set(KEEP_HEAP_ENV) & set(os.environ)  # only the workers got them (not the service tests' children)


def test_a_raising_job_is_its_own_error_and_the_others_finish():
    out = {i: (r, e) for i, r, e in run_parallel(fail_if_odd, [(x,) for x in range(5)], workers=2)}
    assert {i: r for i, (r, e) in out.items() if e is None} == {0: 0, 2: 20, 4: 40}
    assert all(isinstance(out[i][1], ValueError) and f"odd {i}" in str(out[i][1]) for i in (1, 3))


def test_a_dead_worker_is_reported_not_raised():
    out = list(run_parallel(die, [()], workers=1))
    assert len(out) == 1 and out[0][1] is None and isinstance(out[0][2], BrokenProcessPool)
