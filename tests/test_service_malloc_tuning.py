"""keep_freed_memory: after it, the forward's multi-MB temporaries are reused without page faults."""
from __future__ import annotations

import subprocess
import sys

import pytest

from service.malloc_tuning import keep_freed_memory

# 20 rounds of several live 16 MB temporaries (alpha-sized, as a forward without scratch buffers makes):
# together past glibc's trim threshold, so untuned every round faults them in again. Print the faults.
_PROBE = """
import resource, sys
import torch
from service.malloc_tuning import keep_freed_memory
keep_freed_memory(int(sys.argv[1]))
x = torch.randn(400, 10_000, generator=torch.Generator().manual_seed(0))
for i in range(30):
    if i == 10:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = x * 2
    b = a + 1
    (a + b + b.exp()).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(trim_mb: int) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(trim_mb)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_temporaries_are_reused_without_page_faults():
    untuned, tuned = _faults(0), _faults(512)
    # untuned: every round faults its temporaries in again (~10,000 pages); tuned: the heap keeps them
    assert untuned > 20 * 500
    assert tuned < untuned / 5


def test_zero_leaves_glibc_defaults():
    assert keep_freed_memory(0) is False
