"""Service benchmark, workload W1 (L = 10,000 behaviors, 100 candidates, k = 100, 4 heads).

One run measures, on the same data and the same machine state:
  * bare forward: `model.score` on the exact tensors one request produces (B = 1, float16 cached
    projections as the local cache hands them over), no I/O, on as many torch threads as the
    service's inference thread uses;
  * the full HTTP path: a real `python -m service` (uvicorn, uvloop, httptools) on loopback, with
    Redis reads, the local projection cache, micro-batching and JSON, at concurrency 1, 8 and 32.
At concurrency 1 the bare forward and the HTTP path are measured in alternating rounds, so their
ratio is not skewed by other jobs' load coming and going during the run. The output states the date,
the load averages and the thread counts, so the figures can be read in context.
The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams (pre-encoded
requests), so the client steals as little CPU as possible from the server on a small machine.

    python -m bench.bench_service [--quick]        # uses $REDIS_URL if set, else an embedded Redis
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cache.behavior_store import BehaviorBlock, BehaviorStore
from cache.catalog_store import CatalogStore
from cache.connection import open_redis
from cache.layout import Keys
from cache.projection_store import ProjectionStore
from model_store.registry import ModelRegistry
from service.engine.buckets import serving_buckets
from service.engine.worker import default_parallel_threads, default_threads
from service.malloc_tuning import keep_freed_memory
from service.settings import Settings
from service.seeding import load_catalog, load_histories, project
from training.schemas import synthetic_schema
from twin.config import TwinConfig
from twin.kernels.cpu_threads import set_cpu_threads
from twin.model import ServeBatch, TwinCTR

L, C, K, HEADS = 10_000, 100, 100, 4
MAX_CAND = 128  # the service's max_candidates in this run
N_ITEMS, N_AUTHORS, N_CATS = 200_000, 20_000, 200
N_USERS = 64
NOW = 1_764_400_000_000


def w1_model() -> TwinCTR:
    torch.manual_seed(0)
    cfg = TwinConfig(schema=synthetic_schema(N_ITEMS, N_AUTHORS, N_CATS), n_heads=HEADS, top_k=K, max_len=L)
    return TwinCTR(cfg).eval()


def items(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids, ids % N_AUTHORS, ids % N_CATS, (ids * 7) % 1800 + 1], axis=1).astype(np.int64)


def user_block(uid: int) -> BehaviorBlock:
    g = np.random.default_rng(uid)
    ts = NOW - np.sort(g.integers(60_000, 10**11, L))
    cross = np.stack([g.random(L, dtype=np.float32), (g.random(L) > 0.7).astype(np.float32)], 1)
    return BehaviorBlock(item_id=g.zipf(1.1, L).astype(np.int64) % N_ITEMS, ts=ts.astype(np.int64), cross=cross, total=L)


def candidates(uid: int) -> list[int]:
    return np.random.default_rng(10_000 + uid).integers(0, N_ITEMS, C).tolist()


async def seed(url: str, keys: Keys, model: TwinCTR, version: str) -> None:
    h = await open_redis(url)
    try:
        ids = np.arange(N_ITEMS, dtype=np.int64)
        await load_catalog(h.client, keys, ids, items(ids))
        await load_histories(h.client, keys, 2, list(range(N_USERS)), [user_block(u) for u in range(N_USERS)])
        await project(h.client, keys, model, version, 4)
    finally:
        await h.aclose()


async def bare_batch(url: str, keys: Keys, model: TwinCTR, version: str, uid: int) -> ServeBatch:
    """The tensors the service builds for one request (B = 1), read from the same Redis: float16
    projections (the model converts the key half and the selected value rows itself)."""
    h = await open_redis(url)
    try:
        block = (await BehaviorStore(h.client, keys, 2).read_newest([uid], L))[0]
        proj, _ = await ProjectionStore(h.client, keys, version, model.proj_dim).get(block.item_id)
        recent, _ = await CatalogStore(h.client, keys, 4).get(block.item_id[:model.cfg.short_len])
    finally:
        await h.aclose()
    t = torch.from_numpy
    return ServeBatch(seq_proj=t(np.asarray(proj, np.float16))[None], seq_cross=t(block.cross)[None],
                      seq_ts=t(block.ts)[None], seq_mask=torch.ones(1, L, dtype=torch.bool),
                      recent_items=t(recent)[None], cand=t(items(np.array(candidates(uid))))[None],
                      cand_mask=torch.ones(1, C, dtype=torch.bool), now=torch.tensor([NOW]), hist_len=torch.tensor([L]))


def time_bare(model: TwinCTR, batches: list[ServeBatch], n: int, warm: int = 5) -> list[float]:
    """-> n wall-clock latencies (ms) of model.score, cycling over the batches (the users the HTTP
    rounds cycle over: a single batch would sit in the CPU caches and flatter the bare forward)."""
    with torch.inference_mode():
        for i in range(warm):
            model.score(batches[i % len(batches)])
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            model.score(batches[i % len(batches)])
            out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---- a minimal HTTP/1.1 keep-alive client -------------------------------------------------------
def request_bytes(port: int, uid: int) -> bytes:
    body = json.dumps({"user_id": uid, "candidates": [{"item_id": c} for c in candidates(uid)],
                       "context": {"ts": NOW}}).encode()
    head = (f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return status, await reader.readexactly(length)


@dataclass
class Run:
    """One load run's results (latencies in ms)."""

    lat: list[float] = field(default_factory=list)
    secs: float = 0.0
    errors: int = 0
    degraded: int = 0
    stages: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: "Run") -> None:
        self.lat += other.lat
        self.secs += other.secs
        self.errors += other.errors
        self.degraded += other.degraded
        for k, v in other.stages.items():
            self.stages.setdefault(k, []).extend(v)


async def load(port: int, conc: int, reqs: list[bytes], seconds: float = 0.0, n: int = 0) -> Run:
    """conc keep-alive clients sending reqs round-robin for `seconds`, or `n` requests in all."""
    run = Run()
    sent = 0
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conc)]  # before the clock starts
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal sent
        reader, writer = conns[w]
        i = w
        while (sent < n) if n else (time.perf_counter() < stop_at):
            sent += 1
            t0 = time.perf_counter()
            status, body = await call(reader, writer, reqs[i % len(reqs)])
            run.lat.append((time.perf_counter() - t0) * 1e3)
            if status != 200:
                run.errors += 1
            else:
                j = json.loads(body)
                run.degraded += bool(j["degraded"])
                for k, v in j["timings_ms"].items():
                    run.stages.setdefault(k, []).append(v)
            i += conc
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    run.secs = time.perf_counter() - t0
    return run


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(port: int, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write("GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, _ = await call(r, w, b"")
            w.close()
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError("service did not become ready")


def machine_line() -> str:
    load1, load5, load15 = os.getloadavg()
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
            f"load average {load1:.2f} / {load5:.2f} / {load15:.2f} (1 / 5 / 15 min)")


async def bench(quick: bool) -> None:
    from cache.connection import EmbeddedRedis

    emb = None
    url = os.environ.get("REDIS_URL")
    if not url:
        emb = EmbeddedRedis()
        url = f"unix://{emb.socket_path}"
    keys = Keys(prefix=f"bench{os.getpid()}")
    tmp = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    proc = None
    threads = default_threads(torch.device("cpu"))  # what the service's inference thread runs on
    parallel = default_parallel_threads(torch.device("cpu"))
    set_cpu_threads(parallel)  # a lone request: what the service does with its parallel threads
    keep_freed_memory(Settings.model_fields["malloc_keep_mb"].default)  # as `python -m service` does
    torch.set_num_threads(threads)
    at_start = machine_line()
    rounds, per_round_s, conc_s = (3, 2.0, 4.0) if quick else (5, 4.0, 15.0)
    try:
        model = w1_model()
        reg = ModelRegistry(tmp / "models")
        version = reg.publish(model, metrics={}, data_fingerprint="bench-w1")
        reg.activate(version)
        t0 = time.perf_counter()
        await seed(url, keys, model, version)
        print(f"seeded {N_ITEMS:,} items, {N_USERS} users x {L:,} behaviors, projections in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
        batches = [await bare_batch(url, keys, model, version, u) for u in range(N_USERS)]
        port = free_port()
        env = {**os.environ, "REDIS_URL": url, "TWIN_REDIS_PREFIX": keys.prefix, "TWIN_MODEL_ROOT": str(tmp / "models"),
               "TWIN_PORT": str(port), "TWIN_DEVICE": "cpu", "TWIN_MAX_CANDIDATES": str(MAX_CAND),
               "TWIN_EMBEDDED_REDIS_DIR": "", "TWIN_DEADLINE_MS": "10000", "TWIN_TORCH_THREADS": str(threads),
               "TWIN_PARALLEL_THREADS": str(parallel),
               # the CPU default buckets (8 steps per octave), explicit so the run does not depend on who
               # picks the defaults: power-of-two buckets would pad W1's 100 candidates to 128
               "TWIN_SEQ_BUCKETS": json.dumps(serving_buckets(64, L, "cpu", align=64)),
               "TWIN_CAND_BUCKETS": json.dumps(serving_buckets(8, MAX_CAND, "cpu"))}
        proc = subprocess.Popen([sys.executable, "-m", "service", "--log-level", "warning"], env=env)
        await wait_ready(port)
        reqs = [request_bytes(port, u) for u in range(N_USERS)]
        await load(port, 4, reqs, n=2 * N_USERS)  # every user once through the local cache and the paths
        # Concurrency 1, alternating with the bare forward: both see the same load over the run.
        bare: list[float] = []
        one = Run()
        for _ in range(rounds):
            bare += time_bare(model, batches, int(per_round_s * 1e3 / 2 / 40), warm=2)
            one.add(await load(port, 1, reqs, seconds=per_round_s / 2))
        runs = [(1, one)] + [(c, await load(port, c, reqs, seconds=conc_s)) for c in (8, 32)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if emb is not None:
            emb.stop()
    b50, b99 = pct(bare, 50), pct(bare, 99)
    print(f"\n### W1 (L={L:,}, C={C}, k={K}, {HEADS} heads), CPU\n")
    print(f"{'quick run' if quick else 'full run'}; start: {at_start}; end: {machine_line()}.  ")
    print(f"torch threads: {threads}, parallel threads: {parallel} (a lone request's GEMM heads and top-k rows; a batch's requests side by side), in the bare forward and in the service.\n")
    print(f"bare forward `model.score` (B=1, float16 projections): p50 {b50:.2f} ms, p99 {b99:.2f} ms, "
          f"{1e3 / b50:.1f} req/s ({len(bare)} calls, interleaved with the concurrency-1 rounds)\n")
    print("| concurrency | HTTP p50 ms | HTTP p99 ms | req/s | HTTP p50 / bare p50 | errors | degraded | requests "
          "| server p50 ms: queue / fetch / gsu / esu / total |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for conc, r in runs:
        split = " / ".join(f"{pct(r.stages[k], 50):.1f}" if r.stages.get(k) else "-"
                           for k in ("queue", "fetch", "gsu", "esu", "total"))
        print(f"| {conc} | {pct(r.lat, 50):.2f} | {pct(r.lat, 99):.2f} | {len(r.lat) / r.secs:.1f} | "
              f"{pct(r.lat, 50) / b50:.2f}x | {r.errors} | {r.degraded} | {len(r.lat)} | {split} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    args = ap.parse_args()
    asyncio.run(bench(args.quick))


if __name__ == "__main__":
    main()
