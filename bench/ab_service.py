"""The HTTP path of two code versions side by side: this checkout against a git ref, on one machine state.

On a shared 2-core box the load swings latency by 2x within minutes, so two `make bench-service` runs
minutes apart cannot show a change of a few tenths of a millisecond. This runs both versions at once:
`git worktree` checks the ref out into a temporary folder, one `python -m service` starts from each
tree (the same virtual environment, Redis data and W1 world as bench.bench_service's warm path), and
concurrency-1 rounds alternate between them, so load coming and going falls on both alike. It prints,
per version, HTTP p50 / p99, the server's own stage p50s and "outside": HTTP p50 minus the handler's
total p50 (parsing, validation, serialization, ASGI layers, loopback), then new / base ratios.

    python -m bench.ab_service [--base REF] [--rounds N] [--seconds S]   # `make bench-ab BASE=REF`
    python -m bench.ab_service --new-env TWIN_WARMUP=none                 # one version, two settings

--base-env / --new-env KEY=VALUE add settings to one service's environment (repeatable), so that with
--base HEAD and a clean tree the run compares settings. The base ref must run with this checkout's
dependencies (one environment serves both).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.bench_service import (N_USERS, Run, bench_redis, free_port, load, machine_line, request_bytes, seed,
                                 service_env, wait_ready, w1_model)
from cache.layout import Keys
from model_store.registry import ModelRegistry
from service.engine.worker import default_parallel_threads, default_threads

ROOT = Path(__file__).resolve().parents[1]


def row(r: Run) -> dict[str, float]:
    total = float(np.median(r.stages["total"]))
    p50 = float(np.median(r.lat))
    return {"p50": p50, "p99": float(np.percentile(r.lat, 99)), "fetch": float(np.median(r.stages["fetch"])),
            "gsu": float(np.median(r.stages["gsu"])), "esu": float(np.median(r.stages["esu"])), "total": total,
            "outside": p50 - total, "n": len(r.lat), "errors": r.errors}


async def compare(base_ref: str, rounds: int, seconds: float, extra_env: dict[str, dict[str, str]]
                  ) -> dict[str, dict[str, float]]:
    async with bench_redis("ab") as (url, keys):
        return await _compare(url, keys, base_ref, rounds, seconds, extra_env)


async def _compare(url: str, keys: Keys, base_ref: str, rounds: int, seconds: float,
                   extra_env: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="twin-ab-"))
    tree = tmp / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), base_ref], check=True)
    procs: list[subprocess.Popen] = []
    try:
        model = w1_model()
        reg = ModelRegistry(tmp / "models")
        version = reg.publish(model, metrics={}, data_fingerprint="bench-w1")
        reg.activate(version)
        await seed(url, keys, model, version)
        cpu = torch.device("cpu")
        ports = {"base": free_port(), "new": free_port()}
        for name, cwd in (("base", tree), ("new", ROOT)):
            env = service_env(url, keys, tmp / "models", ports[name], default_threads(cpu),
                              default_parallel_threads(cpu), cold=False)
            env["PYTHONPATH"] = str(cwd)  # each service imports its own tree's packages
            env.update(extra_env[name])
            procs.append(subprocess.Popen([sys.executable, "-m", "service", "--log-level", "warning"], env=env, cwd=cwd))
        for port in ports.values():
            await wait_ready(port)
        reqs = {name: [request_bytes(port, u) for u in range(N_USERS)] for name, port in ports.items()}
        for name, port in ports.items():  # every user once through each service's caches
            await load(port, 4, reqs[name], n=2 * N_USERS)
        runs = {name: Run() for name in ports}
        for i in range(rounds):  # the order flips every round: neither version always runs just after the other
            for name, port in (list(ports.items()) if i % 2 == 0 else list(ports.items())[::-1]):
                runs[name].add(await load(port, 1, reqs[name], seconds=seconds))
        return {name: row(r) for name, r in runs.items()}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="git ref to compare this checkout against (default HEAD)")
    ap.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    ap.add_argument("--seconds", type=float, default=1.5, help="seconds of load per version per round")
    for side in ("base", "new"):
        ap.add_argument(f"--{side}-env", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a setting for the {side} service's environment (repeatable)")
    args = ap.parse_args()
    extra = {side: dict(kv.split("=", 1) for kv in getattr(args, f"{side}_env")) for side in ("base", "new")}
    start = machine_line()
    res = asyncio.run(compare(args.base, args.rounds, args.seconds, extra))
    said = "".join(f", {side} env {' '.join(getattr(args, f'{side}_env'))}" for side in ("base", "new")
                   if getattr(args, f"{side}_env"))
    print(f"W1 HTTP path at concurrency 1, base = {args.base}, new = this checkout{said}; start: {start}; "
          f"end: {machine_line()}.\n")
    cols = ("p50", "p99", "fetch", "gsu", "esu", "total", "outside")
    print("| version | requests | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for name, r in res.items():
        print(f"| {name} | {r['n']:.0f} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    print("| new / base | | " + " | ".join(f"{res['new'][c] / res['base'][c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
