"""Benchmark of the Redis data plane (cache/): projector, cold fill, warm gather, behavior reads.

    python -m bench.bench_stores [--items 1000000] [--quick] [--redis-url URL]

Uses $REDIS_URL (or --redis-url) when given, else a private embedded redis-server. The model is
a real TwinCTR (synthetic schema, 4 heads, d_k = d_v = 16 -> D = 128) with random weights: the
projector's cost does not depend on the weight values. Catalog: `--items` items, ids 0..N-1,
author ids Zipf(1.1). Keys go under a unique prefix, deleted at the end.

Targets (2-core CPU, loopback Redis): warm gather of 10,000 <= 1 ms; cold fill of 10,000 <= 20 ms;
newest-10,000 behavior read <= 2 ms; projector >= 50,000 items/s.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import hiredis
import numpy as np
import torch
from redis.asyncio.connection import parse_url

from cache.behavior_store import BehaviorBlock, BehaviorStore
from cache.catalog_store import CatalogStore
from cache.connection import open_redis
from cache.layout import Keys, group_by_bucket
from cache.local_cache import LocalProjectionCache
from cache.projection_store import ProjectionStore, delete_version
from cache.projector import best_device, project_version
from service.malloc_tuning import keep_freed_memory
from service.settings import Settings
from training.schemas import synthetic_schema
from twin.config import TwinConfig
from twin.model import TwinCTR

N_CROSS = 2  # stored cross values of the synthetic schema (play_ratio, liked)


def pct(samples: list[float]) -> str:
    a = np.array(samples) * 1e3
    return f"p50 {np.percentile(a, 50):7.3f} ms   p99 {np.percentile(a, 99):7.3f} ms   (n={a.size})"


async def timed(fn: Callable[[], Awaitable[Any]], reps: int, setup: Callable[[], Any] | None = None) -> list[float]:
    out = []
    for _ in range(reps):
        if setup:
            setup()
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def catalog_raw(n: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n, 5]: item_id, author_id (Zipf 1.1), category, duration_s, views (Zipf 1.1)."""
    authors = np.minimum(rng.zipf(1.1, n), 100_000) - 1
    views = np.minimum(rng.zipf(1.1, n), 1_000_000)
    return np.stack([np.arange(n), authors, rng.integers(0, 200, n), rng.integers(1, 1200, n), views],
                    1).astype(np.int64)


async def hmget_server_us(h: Any) -> float | None:
    """Total server-side microseconds spent in HMGET since the last CONFIG RESETSTAT."""
    if h.is_cluster:
        return None
    stats = await h.client.info("commandstats")
    return float(stats.get("cmdstat_hmget", {}).get("usec", 0))


async def redis_floor(url: str | None, keys: list[bytes], width: int, queries: list[np.ndarray]) -> list[float] | None:
    """Seconds per query for the same HMGETs with the client's work taken out: the commands are
    packed before the clock starts and the replies are read as raw bytes, not parsed (every id
    must exist, so the reply length is known). What is left is Redis + loopback transfer, the
    floor of any client. Plain redis:// and unix:// URLs without a password only."""
    if not url or urlsplit(url).scheme not in ("redis", "unix") or parse_url(url).get("password"):
        return None
    o = parse_url(url)
    reader, writer = await (asyncio.open_unix_connection(o["path"]) if "path" in o else
                            asyncio.open_connection(o.get("host", "localhost"), o.get("port", 6379)))
    try:
        writer.write(hiredis.pack_command(("SELECT", o.get("db", 0))))
        await reader.readexactly(5)  # +OK\r\n
        out = []
        for q in queries:
            order, groups = group_by_bucket(q, len(keys))
            ids = q[order].tolist()
            packed = b"".join(hiredis.pack_command(("HMGET", keys[b], *ids[s:e])) for b, s, e in groups)
            # reply: per bucket "*<m>\r\n", then per id "$<width>\r\n<value>\r\n"
            n_bytes = sum(len(b"*%d\r\n" % (e - s)) for _, s, e in groups)
            n_bytes += q.size * (len(b"$%d\r\n" % width) + width + 2)
            t = time.perf_counter()
            writer.write(packed)
            await asyncio.wait_for(reader.readexactly(n_bytes), 10)
            out.append(time.perf_counter() - t)
        return out
    finally:
        writer.close()


async def memory_per_entry(client: Any, keys: list[bytes], entries: int) -> float:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.execute_command("MEMORY USAGE", k, "SAMPLES", 0)
    total = sum(int(x or 0) for x in await pipe.execute())
    return total / max(entries, 1)


async def main(args: argparse.Namespace) -> None:
    reps = 10 if args.quick else 50
    n_items = min(args.items, 100_000) if args.quick else args.items
    keep_mb = Settings.model_fields["malloc_keep_mb"].default
    kept = keep_freed_memory(keep_mb)  # as `python -m service` does: temporaries stop page-faulting
    h = await open_redis(args.redis_url)
    keys = Keys(prefix=f"bench{uuid.uuid4().hex[:8]}", n_buckets=args.n_buckets)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cfg = TwinConfig(schema=synthetic_schema(n_items, 100_000, 200))
    device = best_device()
    model = TwinCTR(cfg).eval().to(device)
    D = model.proj_dim
    print(f"redis: {h.url}   cluster: {h.is_cluster}   device: {device}   torch threads: {torch.get_num_threads()}")
    print(f"malloc: keep_freed_memory({keep_mb} MB) {'applied' if kept else 'NOT applied (not glibc?)'}, "
          f"as the service does at startup")
    print(f"model: TwinCTR (synthetic schema, A={cfg.n_heads}, d_k={cfg.d_k}, d_v={cfg.d_v}) -> D={D} float16 "
          f"= {2 * D} B/item; catalog {n_items:,} items; n_buckets {keys.n_buckets}")
    try:
        # ---- catalog + projector -------------------------------------------------------------
        cat = CatalogStore(h.client, keys, n_features=len(cfg.schema.inherent))
        raw = catalog_raw(n_items, rng)
        t = time.perf_counter()
        for lo in range(0, n_items, 200_000):
            await cat.put(raw[lo:lo + 200_000, 0], raw[lo:lo + 200_000])
        t_cat = time.perf_counter() - t
        print(f"catalog load          {n_items / t_cat:12,.0f} items/s   ({t_cat:.2f} s)")
        version = "bench-v1"
        ps = ProjectionStore(h.client, keys, version, D)
        res = await project_version(model, version, raw[:, 0], cat, ps, batch_size=args.batch_size,
                                    progress=not args.no_progress)
        print(f"projector             {res['items_per_s']:12,.0f} items/s   ({res['seconds']:.2f} s, "
              f"{res['items_written']:,} items, complete={res['complete']})")

        # ---- local cache: cold fill and warm gather ------------------------------------------
        n_q = 10_000
        lc = LocalProjectionCache(200_000, D, device, ps, cat, None)
        queries = [rng.choice(n_items, n_q, replace=False).astype(np.int64) for _ in range(reps)]
        it = iter(queries)
        await h.client.config_resetstat()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cold = await timed(lambda: lc.gather(next(it)), reps, setup=lc.clear)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / reps
        server_us = await hmget_server_us(h)
        assert lc.stats()["defaulted"] == 0
        q = queries[-1]
        await lc.gather(q)
        warm = await timed(lambda: lc.gather(q), reps * 4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"cold fill 10,000      {pct(cold)}   (Redis -> device slab, empty cache)")
        print(f"  minor page faults   {faults:,.0f} per fill (mean, with clear())")
        if server_us is not None:
            print(f"  of which Redis server time {server_us / reps / 1e3:.3f} ms per fill (mean, INFO commandstats)")
        print(f"warm gather 10,000    {pct(warm)}   (all hits)")
        reads = iter([rng.choice(n_items, n_q, replace=False) for _ in range(reps)])
        store_get = await timed(lambda: ps.get(next(reads)), reps)
        print(f"  of which Redis read {pct(store_get)}   (ProjectionStore.get alone)")
        floor = await redis_floor(args.redis_url, keys.proj_buckets(version), 2 * D,
                                  [rng.choice(n_items, n_q, replace=False) for _ in range(reps)])
        if floor is not None:
            print(f"  Redis floor         {pct(floor)}   (same HMGETs pre-packed, replies not parsed)")

        # ---- behaviors -----------------------------------------------------------------------
        bs = BehaviorStore(h.client, keys, n_cross=N_CROSS, cap=100_000)
        n_users, L = 8, 100_000
        for u in range(n_users):
            blk = BehaviorBlock(item_id=rng.integers(0, n_items, L), ts=np.arange(L, 0, -1) * 1000,
                                cross=rng.random((L, N_CROSS), dtype=np.float32), total=L)
            await bs.write_history([u], [blk])
        users = iter(rng.integers(0, n_users, reps * 4).tolist())
        b10k = await timed(lambda: bs.read_newest([next(users)], 10_000), reps * 2)
        b100k = await timed(lambda: bs.read_newest([next(users)], 100_000), reps * 2)
        print(f"behaviors newest 10k  {pct(b10k)}")
        print(f"behaviors newest 100k {pct(b100k)}")

        # ---- memory ----------------------------------------------------------------------------
        proj_b = await memory_per_entry(h.client, keys.proj_buckets(version), n_items)
        cat_b = await memory_per_entry(h.client, keys.item_buckets(), n_items)
        beh_b = await memory_per_entry(h.client, [keys.user_log(u) for u in range(n_users)], n_users * L)
        print(f"Redis bytes per item: projection {proj_b:.0f} B (payload {2 * D} B), catalog {cat_b:.0f} B "
              f"(payload 32 B); per behavior {beh_b:.1f} B (payload {bs.rec} B)   [MEMORY USAGE SAMPLES 0]")
    finally:
        await delete_version(h.client, keys, version)
        pipe = h.client.pipeline(transaction=False)
        for k in keys.item_buckets() + [keys.user_log(u) for u in range(8)] + [keys.user_count(u) for u in range(8)]:
            pipe.unlink(k)
        await pipe.execute()
        await h.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.bench_stores", description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="<= 100k items, fewer repetitions")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    p.add_argument("--n-buckets", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16_384)
    p.add_argument("--no-progress", action="store_true")
    asyncio.run(main(p.parse_args()))
