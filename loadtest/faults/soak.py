"""`python -m loadtest.faults.soak [--minutes 10] [--rate 20]`: a fixed-rate soak of the local stack.

Score requests at `rate`/s and event batches at rate/4 for `minutes`, after a warm-up minute (cold
caches and first allocations are not drift). Every 10 s the scorer's RSS is read; each minute's p50
and p99 are kept. Pass: RSS growth < 10% (first sample after the warm-up -> last), no request
outside the contract, every acknowledged event in Redis. Exit 1 otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.faults.load import Load
from loadtest.faults.scenarios import found_in_redis, unexpected
from loadtest.faults.stack import Stack

RSS_TARGET = 0.10


async def soak(stack: Stack, minutes: float, rate: float, warm_s: float) -> dict:
    warm = Load(stack.port, stack.world, score_rps=rate, events_rps=rate / 4, seed=99)
    warm.start()
    await asyncio.sleep(warm_s)
    await warm.stop()
    load = Load(stack.port, stack.world, score_rps=rate, events_rps=rate / 4, seed=100)
    t0 = time.monotonic()
    load.start()
    rss = []
    while (elapsed := time.monotonic() - t0) < minutes * 60:
        rss.append((elapsed, stack.rss_bytes()))
        await asyncio.sleep(min(10.0, minutes * 60 - elapsed))
    rss.append((time.monotonic() - t0, stack.rss_bytes()))
    await load.stop()
    per_min = []
    for m in range(int(np.ceil(minutes))):
        ms = [s.ms for s in load.window(t0 + 60 * m, t0 + 60 * (m + 1), "score") if s.status == "200"]
        if ms:
            per_min.append((m + 1, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms)))
    import json
    import urllib.request

    with urllib.request.urlopen(f"{stack.url}/v1/models", timeout=10) as r:
        n_cross = len(json.loads(r.read())["cross"])
    return {"samples": load.samples, "rss": rss, "per_min": per_min, "bad": unexpected(load.samples),
            "acked": len(load.acked), "found": found_in_redis(stack, load.acked, n_cross)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.faults.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20.0, help="score requests per second")
    ap.add_argument("--warm-s", type=float, default=60.0)
    ap.add_argument("--data-dir", type=Path, default=Path("var/faults"))
    ap.add_argument("--out", type=Path, default=Path("reports/faults"))
    ap.add_argument("--base-port", type=int, default=8101)
    ap.add_argument("--redis-port", type=int, default=6491)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    with Stack(args.data_dir, args.base_port, args.redis_port) as stack:
        r = asyncio.run(soak(stack, args.minutes, args.rate, args.warm_s))
    rss0, rss1 = r["rss"][0][1], r["rss"][-1][1]
    growth = (rss1 - rss0) / rss0 if rss0 else float("nan")
    first, last = r["per_min"][0], r["per_min"][-1]
    codes: dict[str, int] = {}
    for s in r["samples"]:
        codes[s.status] = codes.get(s.status, 0) + 1
    lines = [f"`python -m loadtest.faults.soak {' '.join(argv if argv is not None else sys.argv[1:])}`, "
             f"{started:%Y-%m-%d %H:%M} UTC: {args.minutes:g} min at {args.rate:g} score/s + {args.rate / 4:g} "
             f"event batches/s after {args.warm_s:g} s of warm-up", "",
             f"- requests: {len(r['samples'])} ({', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))}); "
             f"outside the contract: {r['bad']}; events acknowledged / found in Redis: {r['acked']} / {r['found']}",
             f"- RSS: {rss0 / 2**20:.1f} MiB -> {rss1 / 2**20:.1f} MiB ({growth:+.2%}; max "
             f"{max(b for _, b in r['rss']) / 2**20:.1f} MiB; target < +{RSS_TARGET:.0%})",
             f"- latency drift: minute {first[0]} p50 {first[1]:.1f} ms / p99 {first[2]:.1f} ms -> minute {last[0]} "
             f"p50 {last[1]:.1f} ms / p99 {last[2]:.1f} ms", "", "| minute | p50 ms | p99 ms | answers |", "|---|---|---|---|",
             *(f"| {m} | {a:.1f} | {b:.1f} | {n} |" for m, a, b, n in r["per_min"])]
    ok = growth < RSS_TARGET and r["bad"] == 0 and r["acked"] == r["found"]
    lines += ["", "verdict: " + ("PASS" if ok else "FAIL")]
    (args.out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
