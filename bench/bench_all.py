"""`make bench`: every benchmark of the project in one run, written to reports/bench/summary.{json,md}.

    python -m bench.bench_all [--quick] [--workloads W1,W2,W3] [--skip-http] [--skip-stores] [--out DIR]

Parts, in this order, in this process (the HTTP part also starts two `python -m service` processes):
  1. the machine: CPU model, cores, torch / numba versions and threads, load averages (again at the end);
  2. per workload (W1, W2, W3 of shared/DESIGN.md sec. 4), bench.bench_forward: floors (a) GEMM,
     (b) GEMM + one read pass, (c) GEMM + torch.topk, the measured copy bandwidth against the bytes a
     request must move, the TWIN serving forward as the engine runs it (with and without the full-
     sequence log-sum-exp), raw MHTA, the K_h projection against the cached gather, the selection
     kernels alone; all interleaved round by round;
  3. bench.bench_service: the HTTP path at W1, warm and cold, concurrency 1 and 32 (and 8 warm);
  4. bench.bench_stores: the Redis data plane (projector, cold fill, warm gather, behavior reads).
Ratios are taken within this run; the targets of issue 11 are checked and listed with their figures.
Uses $REDIS_URL when set (keys under a private prefix, deleted at the end), else an embedded Redis.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numba
import torch

from bench import bench_forward, bench_service, bench_stores
from service.engine.worker import default_parallel_threads, default_threads
from service.malloc_tuning import keep_freed_memory
from service.settings import Settings
from twin.kernels.cpu_threads import set_cpu_threads


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16") if f in have)
    except OSError:
        pass
    return []


def machine() -> dict:
    dev = torch.device("cpu")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "torch": torch.__version__, "numba": numba.__version__, "gpu": gpu,
            "torch_threads": default_threads(dev), "parallel_threads": default_parallel_threads(dev),
            "load_before": list(os.getloadavg())}


TARGETS = [  # (label, workload, value getter, bound, "<=" or ">=")
    ("TWIN forward p50 / floor (b) p50", "W1", lambda w: w["ratios"]["twin_over_floor_b"], 2.0, "<="),
    ("TWIN forward p50 / floor (b) p50", "W2", lambda w: w["ratios"]["twin_over_floor_b"], 2.0, "<="),
    ("TWIN forward p50 / floor (b) p50", "W3", lambda w: w["ratios"]["twin_over_floor_b"], 2.0, "<="),
    ("TWIN forward p99 ms", "W1", lambda w: w["parts"]["twin"]["p99_ms"], 8.0, "<="),
    ("TWIN forward p99 ms", "W2", lambda w: w["parts"]["twin"]["p99_ms"], 60.0, "<="),
    ("raw MHTA p50 / TWIN p50", "W1", lambda w: w["ratios"]["raw_mhta_over_twin"], 3.0, ">="),
    ("raw MHTA p50 / TWIN p50", "W2", lambda w: w["ratios"]["raw_mhta_over_twin"], 3.0, ">="),
    ("K_h projection cost removed by the cached gather (user new to the process)", "W1",
     lambda w: w["ratios"]["kh_cost_removed"], 0.99, ">="),
    ("K_h projection cost removed, warm user (user-sequence cache)", "W1",
     lambda w: w["ratios"]["kh_cost_removed_warm_user"], 0.99, ">="),
]


def check_targets(res: dict) -> list[dict]:
    out = []
    for label, wl, get, bound, op in TARGETS:
        if wl not in res["workloads"]:
            continue
        try:
            v = float(get(res["workloads"][wl]))
        except KeyError:
            continue
        out.append({"target": label, "workload": wl, "value": v, "bound": bound, "op": op,
                    "met": v <= bound if op == "<=" else v >= bound})
    http = res.get("http")
    if http:
        warm1, cold1, cold32, warm32 = http["warm"][1], http["cold"][1], http["cold"][32], http["warm"][32]
        for label, v, bound in [("HTTP p50 / bare forward p50, c=1 warm", warm1["p50_ms"] / http["bare"]["p50_ms"], 1.25),
                                ("cold HTTP p99 / warm p99, c=1", cold1["p99_ms"] / warm1["p99_ms"], 2.0),
                                ("cold HTTP p99 / warm p99, c=32", cold32["p99_ms"] / warm32["p99_ms"], 2.0)]:
            out.append({"target": label, "workload": "W1", "value": v, "bound": bound, "op": "<=", "met": v <= bound})
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# `make bench` summary", "",
             f"{m['date_utc']} UTC; {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags'])}); python {m['python']}, "
             f"torch {m['torch']}, numba {m['numba']}; torch threads {m['torch_threads']}, parallel threads "
             f"{m['parallel_threads']}; GPU: {m['gpu'] or 'none'}.  ",
             "load average (1 / 5 / 15 min) before: " + " / ".join(f"{x:.2f}" for x in m["load_before"])
             + "; after: " + " / ".join(f"{x:.2f}" for x in m["load_after"]) + ".  ",
             f"copy bandwidth (256 MB memcpy, read + write): {res['copy_gbs']:.1f} GB/s.  "
             f"{'quick run' if res['quick'] else 'full run'}; {res['seconds']:.0f} s.", "",
             "## Targets (issue 11)", "", "| target | workload | measured | bound | met |", "|---|---|---:|---:|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['workload']} | {t['value']:.3f} | {t['op']} {t['bound']} | "
                     f"{'yes' if t['met'] else '**no**'} |")
    for name, w in res["workloads"].items():
        mb = w["bytes_per_request"] / 1e6
        lines += ["", f"## {name}: L = {w['L']:,}, C = {w['C']}, k = {w['k']}, {w['heads']} heads, {w['users']} users cycled",
                  "", f"bytes a request must move (alpha written + read once, key half read, selected values): "
                  f"{mb:.1f} MB -> {mb / res['copy_gbs']:.2f} ms at the copy bandwidth.", "",
                  f"GSU path of the serving forward (service.engine.gsu_route, timed as the engine's warm-up times it): "
                  f"{w.get('gsu_route', 'not measured')}.", "",
                  "| part | p50 ms | p99 ms | n |", "|---|---:|---:|---:|"]
        for part, v in w["parts"].items():
            lines.append(f"| {part} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['n']} |")
        lines += ["", "| ratio (p50 / p50) | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in w["ratios"].items()]
    if res.get("http"):
        lines += ["", "## HTTP path, W1 (bench.bench_service)", ""] + bench_service.http_table(res["http"])
    if res.get("stores"):
        lines += ["", "## Redis data plane (bench.bench_stores)", "", "```", res["stores"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke of the whole bench)")
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-stores", action="store_true")
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the forward parts and the service run (cuda: bench/gpu_check.sh)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res: dict = {"machine": machine(), "quick": args.quick, "device": args.device}
    # the service's CPU settings, so the in-process parts run as the engine does
    keep_freed_memory(Settings.model_fields["malloc_keep_mb"].default)
    torch.set_num_threads(res["machine"]["torch_threads"])
    set_cpu_threads(res["machine"]["parallel_threads"])
    res["copy_gbs"] = bench_forward.copy_bandwidth_gbs()
    res["workloads"] = {}
    for name in args.workloads.split(","):
        print(f"[bench] {name} ...", file=sys.stderr)
        res["workloads"][name] = bench_forward.run_workload(name, args.quick, device=torch.device(args.device))
    if not args.skip_http:
        print("[bench] HTTP ...", file=sys.stderr)
        res["http"] = asyncio.run(bench_service.measure_http(args.quick, log=lambda s: print(s, file=sys.stderr),
                                                             device=args.device))
    if not args.skip_stores:
        print("[bench] stores ...", file=sys.stderr)
        buf = io.StringIO()
        st = argparse.Namespace(items=1_000_000, quick=args.quick, redis_url=os.environ.get("REDIS_URL"),
                                n_buckets=256, batch_size=16_384, no_progress=True)
        with contextlib.redirect_stdout(buf):
            asyncio.run(bench_stores.main(st))
        res["stores"] = buf.getvalue()
    res["machine"]["load_after"] = list(os.getloadavg())
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = check_targets(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
