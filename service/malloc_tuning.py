"""Keep freed heap memory in the process instead of handing it back to the kernel (glibc only).

A request allocates and frees MBs of short-lived numpy/torch temporaries (the fused GSU's key blocks
and survivors, the cross features of all L; 16 MB more at W1 where alpha is materialised). glibc
serves blocks that large with fresh mmap()s, or trims the heap top after a free, so every request
faults the same pages in again: measured, when alpha was materialised, ~4,000 minor page faults and
2-10x slower elementwise ops in the GSU (`_order_key` 24 ms -> 2 ms on the dev box).
Raising the mmap threshold and the trim threshold makes the heap keep and reuse that memory; the cost
is that RSS stays at its high-water mark (bounded by the largest batch) instead of shrinking between
bursts. Same effect as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the environment, applied at
run time so `python -m service` gets it however it is started.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# 32 MiB: mallopt(3) documents it as the 64-bit maximum (DEFAULT_MMAP_THRESHOLD_MAX); the glibc of the
# dev box accepted 1 GiB at run time too (checked 2026-12-02), but nothing on the CPU serving path
# allocates more than a few MB per request since alpha is no longer materialised (twin.kernels.
# cpu_fused_gsu), so the documented bound is kept. Blocks above it still mmap.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def keep_freed_memory(trim_threshold_mb: int) -> bool:
    """Apply the thresholds; trim_threshold_mb = free heap kept before trimming (0 = leave glibc's
    defaults). -> True if applied (False on a non-glibc libc or when glibc refused a value)."""
    if trim_threshold_mb <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune
        log.info("malloc tuning skipped: no glibc mallopt")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, min(trim_threshold_mb, 2047) * 1024 * 1024))
    if not ok:
        log.warning("glibc refused the malloc thresholds; temporaries will page-fault on every request")
    return ok
