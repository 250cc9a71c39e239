"""bench/gpu_check.sh's CPU-side parts: its arguments and its dry run (the GPU steps need a lent machine)."""
from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_dry_run_prints_every_step_within_the_budget_and_runs_nothing(tmp_path):
    out = tmp_path / "gpu"
    r = run("--dry-run", "--out", str(out), "--budget-s", "450", "--wheels", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    steps = {line.split()[0]: int(line.split()[1].rstrip("s")) for line in r.stdout.splitlines()
             if line.startswith("  ") and line.split()[0] in ("env", "install", "tests", "bench")}
    assert set(steps) == {"env", "install", "tests", "bench"}
    assert sum(steps.values()) <= 450 < 480  # the whole check inside 8 minutes
    assert "bench.bench_all --device cuda" in r.stdout and "no wheels" not in r.stderr
    assert "none in" in r.stdout and not out.exists()


def test_bad_arguments_are_refused():
    assert run("--bogus").returncode == 2
    r = run("--dry-run", "--budget-s", "5")
    assert r.returncode == 2 and "--budget-s" in r.stderr
