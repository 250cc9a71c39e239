"""Service benchmark, workload W1 (L = 10,000 behaviors, 100 candidates, k = 100, 4 heads).

One run measures, on the same data and the same machine state:
  * bare forward: the engine's forward (service.engine.forward.run_batch, with the worker's branch
    threads) on exactly what one request hands the inference thread (B = 1, float16 cached
    projections as the local cache hands them over), no I/O, on the service's threads;
  * the full HTTP path, warm: a real `python -m service` (uvicorn, uvloop, httptools) on loopback,
    with Redis reads, the local projection cache, micro-batching and JSON, at concurrency 1, 8 and 32,
    for 64 users whose sequences are all in the user-sequence cache (warmed first);
  * the HTTP path, cold: a second service process with the user-sequence cache off and a projection
    cache of 20,000 items, cycling over 64 other users whose histories use disjoint item ranges
    (3,000 items each, 192,000 in all): every request reads its behaviors from Redis and finds
    almost none of its projections in the process, so they come from Redis too.
At concurrency 1 the bare forward, the warm and the cold HTTP path are measured in alternating rounds,
so their ratios are not skewed by other jobs' load coming and going during the run. The output states
the date, the load averages and the thread counts, so the figures can be read in context.
The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams (pre-encoded
requests), so the client steals as little CPU as possible from the server on a small machine.

    python -m bench.bench_service [--quick]        # uses $REDIS_URL if set, else an embedded Redis
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
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
from service.engine.forward import run_batch
from service.engine.gsu_route import GsuRoutes
from service.engine.gsu_route_probe import measure_route
from service.engine.request import ScoreInputs
from service.engine.slot import ModelSlot
from service.engine.worker import default_parallel_threads, default_threads
from service.malloc_tuning import keep_freed_memory
from service.settings import Settings
from service.seeding import load_catalog, load_histories, project
from training.schemas import synthetic_schema
from twin.config import TwinConfig
from twin.kernels.cpu_threads import set_cpu_threads
from twin.model import TwinCTR

L, C, K, HEADS = 10_000, 100, 100, 4
MAX_CAND = 128  # the service's max_candidates in this run
N_ITEMS, N_AUTHORS, N_CATS = 200_000, 20_000, 200
N_USERS = 64
COLD_USER0, COLD_ITEMS_PER_USER, COLD_CACHE_ITEMS = 1_000, 3_000, 20_000
NOW = 1_764_400_000_000


def w1_model() -> TwinCTR:
    torch.manual_seed(0)
    cfg = TwinConfig(schema=synthetic_schema(N_ITEMS, N_AUTHORS, N_CATS), n_heads=HEADS, top_k=K, max_len=L)
    return TwinCTR(cfg).eval()


def items(ids: np.ndarray) -> np.ndarray:
    """Raw inherent rows [n, 5]: item_id, author_id, category, duration_s, views."""
    return np.stack([ids, ids % N_AUTHORS, ids % N_CATS, (ids * 7) % 1800 + 1, (ids * 31) % 5000],
                    axis=1).astype(np.int64)


def user_block(uid: int) -> BehaviorBlock:
    """Zipf(1.1) items over the catalog; cold users (uid >= COLD_USER0) draw from their own disjoint
    range of COLD_ITEMS_PER_USER items, so no other user's request brings their projections in."""
    g = np.random.default_rng(uid)
    ts = NOW - np.sort(g.integers(60_000, 10**11, L))
    cross = np.stack([g.random(L, dtype=np.float32), (g.random(L) > 0.7).astype(np.float32)], 1)
    item = g.zipf(1.1, L).astype(np.int64)
    if uid >= COLD_USER0:
        item = ((uid - COLD_USER0) * COLD_ITEMS_PER_USER + item % COLD_ITEMS_PER_USER) % N_ITEMS
    return BehaviorBlock(item_id=item % N_ITEMS, ts=ts.astype(np.int64), cross=cross, total=L)


COLD_USERS = list(range(COLD_USER0, COLD_USER0 + N_USERS))


def candidates(uid: int) -> list[int]:
    return np.random.default_rng(10_000 + uid).integers(0, N_ITEMS, C).tolist()


async def seed(url: str, keys: Keys, model: TwinCTR, version: str) -> None:
    h = await open_redis(url)
    try:
        ids = np.arange(N_ITEMS, dtype=np.int64)
        await load_catalog(h.client, keys, ids, items(ids))
        users = list(range(N_USERS)) + COLD_USERS
        await load_histories(h.client, keys, 2, users, [user_block(u) for u in users])
        await project(h.client, keys, model, version, len(model.cfg.schema.inherent))
    finally:
        await h.aclose()


async def bare_inputs(url: str, keys: Keys, model: TwinCTR, version: str, uid: int) -> ScoreInputs:
    """What the service hands its inference thread for one request, read from the same Redis: float16
    projections (the model converts the key half and the selected value rows itself)."""
    h = await open_redis(url)
    try:
        block = (await BehaviorStore(h.client, keys, 2).read_newest([uid], L))[0]
        proj, _ = await ProjectionStore(h.client, keys, version, model.proj_dim).get(block.item_id)
        recent, _ = await CatalogStore(h.client, keys, len(model.cfg.schema.inherent)).get(block.item_id[:model.cfg.short_len])
    finally:
        await h.aclose()
    return ScoreInputs(slot=None, seq_proj=torch.from_numpy(np.asarray(proj, np.float16)), seq_cross=block.cross,  # type: ignore[arg-type]
                       seq_ts=block.ts, recent=np.asarray(recent), cand=items(np.array(candidates(uid))), now=NOW,
                       hist_len=L)


def time_bare(slot: ModelSlot, inputs: list[ScoreInputs], n: int, warm: int = 5,
              branches: Executor | None = None, n_branches: int = 1) -> list[float]:
    """-> n wall-clock latencies (ms) of the engine's forward (service.engine.forward.run_batch, B = 1,
    the worker's branch threads) without any I/O, cycling over the users the HTTP rounds cycle over
    (a single one would sit in the CPU caches and flatter the bare forward)."""
    reqs = [dataclasses.replace(it, slot=slot, seq_proj=it.seq_proj.to(slot.device)) for it in inputs]
    for i in range(warm):
        run_batch(slot, [reqs[i % len(reqs)]], branches, n_branches)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        run_batch(slot, [reqs[i % len(reqs)]], branches, n_branches)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bare_slot(model: TwinCTR, device: str) -> ModelSlot:
    """A ModelSlot for run_batch alone: the engine reads its model, device and bucket fields only."""
    dev = torch.device(device)
    return ModelSlot(version="bench", model=model.to(dev), manifest=None, device=dev,  # type: ignore[arg-type]
                     autocast=torch.float16 if dev.type == "cuda" else None, seq_len=L,
                     seq_buckets=serving_buckets(64, L, dev.type, align=64), cand_buckets=serving_buckets(8, MAX_CAND, dev.type),
                     behaviors=None, catalog=None, local_cache=None)  # type: ignore[arg-type]


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


def service_env(url: str, keys: Keys, models: Path, port: int, threads: int, parallel: int, cold: bool,
                device: str = "cpu") -> dict:
    env = {**os.environ, "REDIS_URL": url, "TWIN_REDIS_PREFIX": keys.prefix, "TWIN_MODEL_ROOT": str(models),
           "TWIN_PORT": str(port), "TWIN_DEVICE": device, "TWIN_MAX_CANDIDATES": str(MAX_CAND),
           "TWIN_EMBEDDED_REDIS_DIR": "", "TWIN_DEADLINE_MS": "10000", "TWIN_TORCH_THREADS": str(threads),
           "TWIN_PARALLEL_THREADS": str(parallel),
           # the CPU default buckets (8 steps per octave), explicit so the run does not depend on who
           # picks the defaults: power-of-two buckets would pad W1's 100 candidates to 128
           "TWIN_SEQ_BUCKETS": json.dumps(serving_buckets(64, L, device, align=64)),
           "TWIN_CAND_BUCKETS": json.dumps(serving_buckets(8, MAX_CAND, device))}
    if cold:  # no user-sequence cache; a projection cache far smaller than the cold users' 192,000 items
        env.update(TWIN_USER_CACHE_MB="0", TWIN_LOCAL_CACHE_CAPACITY=str(COLD_CACHE_ITEMS))
    return env


def summarize(r: Run) -> dict:
    return {"p50_ms": pct(r.lat, 50), "p99_ms": pct(r.lat, 99), "req_per_s": len(r.lat) / r.secs,
            "errors": r.errors, "degraded": r.degraded, "requests": len(r.lat),
            "server_p50_ms": {k: pct(v, 50) for k, v in r.stages.items() if v}}


async def measure_http(quick: bool, log=print, device: str = "cpu") -> dict:
    """The whole HTTP part: seeds a private key prefix, runs the warm and the cold service, returns
    {"bare": {...}, "warm": {conc: {...}}, "cold": {conc: {...}}, "threads": ..., "parallel": ...}."""
    async with bench_redis("bench") as (url, keys):
        return await _measure_http(url, keys, quick, log, device)


@contextlib.asynccontextmanager
async def bench_redis(prefix: str) -> AsyncIterator[tuple[str, Keys]]:
    """-> (url, a private key prefix): $REDIS_URL, else an embedded Redis started for the block. On exit
    the prefix's keys are unlinked (never a flush: the server may hold others' data) or the embedded
    server stopped."""
    from cache.connection import EmbeddedRedis

    emb = None
    url = os.environ.get("REDIS_URL")
    if not url:
        emb = EmbeddedRedis()
        url = f"unix://{emb.socket_path}"
    keys = Keys(prefix=f"{prefix}{os.getpid()}")
    try:
        yield url, keys
    finally:
        if emb is not None:
            emb.stop()
        else:
            h = await open_redis(url)
            try:
                async for k in h.client.scan_iter(match=f"{keys.prefix}*", count=1000):
                    await h.client.unlink(k)
            finally:
                await h.aclose()


async def _measure_http(url: str, keys: Keys, quick: bool, log, device: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    procs: list[subprocess.Popen] = []
    threads = default_threads(torch.device(device))  # what the service's inference thread runs on
    parallel = default_parallel_threads(torch.device(device))
    set_cpu_threads(parallel)  # a lone request: what the service does with its parallel threads
    keep_freed_memory(Settings.model_fields["malloc_keep_mb"].default)  # as `python -m service` does
    torch.set_num_threads(max(threads, 1))
    rounds, per_round_s, conc_s = (3, 2.0, 4.0) if quick else (5, 4.0, 12.0)
    try:
        model = w1_model()
        reg = ModelRegistry(tmp / "models")
        version = reg.publish(model, metrics={}, data_fingerprint="bench-w1")
        reg.activate(version)
        t0 = time.perf_counter()
        await seed(url, keys, model, version)
        log(f"seeded {N_ITEMS:,} items, {2 * N_USERS} users x {L:,} behaviors, projections in "
            f"{time.perf_counter() - t0:.1f}s")
        bare_in = [await bare_inputs(url, keys, model, version, u) for u in range(N_USERS)]
        slot = bare_slot(model, device)
        slot.gsu_routes = GsuRoutes(model.cfg.n_heads, [measure_route(slot, L, C)])  # the W1 shape, as the services' warm-up
        branches = (ThreadPoolExecutor(parallel - 1, initializer=torch.set_num_threads, initargs=(threads,))
                    if device == "cpu" and parallel > 1 else None)  # as the service's InferenceWorker has them
        ports = {"warm": free_port(), "cold": free_port()}
        for kind, port in ports.items():
            env = service_env(url, keys, tmp / "models", port, threads, parallel, cold=kind == "cold", device=device)
            procs.append(subprocess.Popen([sys.executable, "-m", "service", "--log-level", "warning"], env=env))
        for port in ports.values():
            await wait_ready(port)
        reqs = {"warm": [request_bytes(ports["warm"], u) for u in range(N_USERS)],
                "cold": [request_bytes(ports["cold"], u) for u in COLD_USERS]}
        await load(ports["warm"], 4, reqs["warm"], n=2 * N_USERS)  # every warm user once through the caches
        await load(ports["cold"], 1, reqs["cold"][:2], n=4)  # the cold process's own first-call costs
        # Concurrency 1, alternating: bare forward, warm HTTP, cold HTTP see the same load over the run.
        bare: list[float] = []
        one = {"warm": Run(), "cold": Run()}
        for _ in range(rounds):
            bare += time_bare(slot, bare_in, int(per_round_s * 1e3 / 2 / 40), 2, branches, parallel)
            for kind in ("warm", "cold"):
                one[kind].add(await load(ports[kind], 1, reqs[kind], seconds=per_round_s / 2))
        out: dict = {"bare": {"p50_ms": pct(bare, 50), "p99_ms": pct(bare, 99), "n": len(bare)},
                     "warm": {1: summarize(one["warm"])}, "cold": {1: summarize(one["cold"])},
                     "threads": threads, "parallel": parallel}
        for conc in (8, 32):
            out["warm"][conc] = summarize(await load(ports["warm"], conc, reqs["warm"], seconds=conc_s))
        out["cold"][32] = summarize(await load(ports["cold"], 32, reqs["cold"], seconds=conc_s))
        return out
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def http_table(res: dict) -> list[str]:
    b50 = res["bare"]["p50_ms"]
    lines = [f"bare forward (the engine's run_batch, B=1, no I/O): p50 {b50:.2f} ms, p99 {res['bare']['p99_ms']:.2f} ms "
             f"({res['bare']['n']} calls, interleaved with the concurrency-1 rounds)", "",
             "| path | concurrency | HTTP p50 ms | HTTP p99 ms | req/s | p50 / bare p50 | errors | degraded | requests "
             "| server p50 ms: queue / fetch / gsu / esu / total |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind in ("warm", "cold"):
        for conc, r in res[kind].items():
            split = " / ".join(f"{r['server_p50_ms'][k]:.1f}" if k in r["server_p50_ms"] else "-"
                               for k in ("queue", "fetch", "gsu", "esu", "total"))
            lines.append(f"| {kind} | {conc} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['req_per_s']:.1f} | "
                         f"{r['p50_ms'] / b50:.2f}x | {r['errors']} | {r['degraded']} | {r['requests']} | {split} |")
    return lines


async def bench(quick: bool) -> None:
    at_start = machine_line()
    res = await measure_http(quick, log=lambda m: print(m, file=sys.stderr))
    print(f"\n### W1 (L={L:,}, C={C}, k={K}, {HEADS} heads), CPU\n")
    print(f"{'quick run' if quick else 'full run'}; start: {at_start}; end: {machine_line()}.  ")
    print(f"torch threads: {res['threads']}, parallel threads: {res['parallel']} (a lone request's GEMM heads, "
          f"top-k rows; a batch's requests side by side), in the bare forward and in the service.\n")
    print("\n".join(http_table(res)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    args = ap.parse_args()
    asyncio.run(bench(args.quick))


if __name__ == "__main__":
    main()
