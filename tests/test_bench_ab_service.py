"""bench.ab_service end to end, shortened: a git ref checked out beside this tree, both served, both
answered, the table printed, the worktree and the Redis keys gone afterwards."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.connection import open_redis

ROOT = Path(__file__).resolve().parents[1]


async def _ab_keys(url: str) -> set[bytes]:
    """Keys under the tool's prefixes (ab<pid>...)."""
    h = await open_redis(url)
    try:
        return {k async for k in h.client.scan_iter(match="ab[0-9]*", count=1000)}
    finally:
        await h.aclose()


def test_two_versions_are_served_side_by_side_and_leave_nothing_behind(redis_url: str):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    before = asyncio.run(_ab_keys(redis_url))
    r = subprocess.run([sys.executable, "-m", "bench.ab_service", "--base", "HEAD", "--rounds", "1", "--seconds", "0.3",
                        "--new-env", "TWIN_WARMUP=none"], cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    for name in ("base", "new"):
        cells = [c.strip() for c in rows[name].split("|")[2:-1]]
        assert int(cells[0]) > 0 and all(float(c) > 0 for c in cells[1:]), rows[name]  # requests, then ms
    assert "new / base" in rows and "new env TWIN_WARMUP=none" in r.stdout
    assert subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True,
                          text=True).stdout == worktrees  # the base's checkout was removed
    assert asyncio.run(_ab_keys(redis_url)) == before  # its seeded keys were unlinked
