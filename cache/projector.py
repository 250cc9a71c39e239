"""The projector job: P = K_h W^h (and K_h W^v_h) for every catalog item, into Redis, per version.

    await project_version(model, version, catalog_ids, catalog, store, shard=(i, n))

Work is split by BUCKET (item_id % n_buckets): shard i of n owns buckets b with b % n == i and
writes each bucket whole (UNLINK + HSET), then records the bucket in the version's progress hash
(`P:v:V:done`, bucket -> count:checksum). So:
  * resumable: a re-run skips recorded buckets; a crash mid-bucket only redoes that bucket;
  * shardable: processes with different (i, n), or a later run with another n, never overlap;
  * the result is independent of how it was split: the checksum is a sum of per-item hashes of
    the stored bytes, so sharded, resumed and single runs give identical markers;
  * completion: whichever shard records the last bucket writes the marker (count, checksum,
    dim) that serving checks before it activates the version.
Incremental mode re-projects given (new or changed) ids without touching the rest, deletes the
projections of ids no longer in the catalog, and refreshes the affected buckets' records (read
back from Redis) and the marker. Every run that wrote something then publishes it on the version's
change feed (ProjectionStore.note_changed / note_reset), which running scorers poll to drop what
they cached of those items (service/freshness.py): an incremental run reaches them within their
poll interval.

CLI: python -m cache.projector --registry DIR --version V --redis-url URL [--shard i/n]
                               [--incremental-ids FILE] [--batch-size N] [--delete-version V]
                               [--nice N] [--threads N]
(the service runs it as `--nice 19 --threads 1` to project a version activated while another one
serves, so the job's CPU goes to the serving process first; the URL comes from $REDIS_URL then, never
the command line, where `ps` would show a password).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from cache import checksum as ck
from cache.catalog_store import CatalogStore
from cache.layout import PROJ_DTYPE, check_ids, group_by_bucket
from cache.projection_store import ProjectionStore

log = logging.getLogger(__name__)


class Projector(Protocol):
    proj_dim: int

    def project_items(self, item_raw: torch.Tensor) -> torch.Tensor: ...  # [N, F_h] -> [N, D]


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")


# Tiny batches are padded to this many rows: a 1-row matmul takes a matrix-vector kernel that
# rounds differently, which would make a shard's last 1-item batch differ from a single run.
MIN_ROWS = 16


def project_array(model: Projector, raw: np.ndarray, device: torch.device) -> np.ndarray:
    """raw int64 [N, F_h] -> float16 [N, D] (cast on the device: half the bytes to copy back)."""
    n = raw.shape[0]
    if n == 0:
        return np.zeros((0, model.proj_dim), np.float16)
    if n < MIN_ROWS:
        raw = np.concatenate([raw, np.repeat(raw[-1:], MIN_ROWS - n, axis=0)])  # [MIN_ROWS, F_h]
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.int64)).to(device)
        y = model.project_items(x)  # [max(N, MIN_ROWS), D]
        if y.shape != (raw.shape[0], model.proj_dim):
            raise ValueError(f"project_items returned {tuple(y.shape)}, expected ({raw.shape[0]}, {model.proj_dim})")
        return y[:n].to(torch.float16).cpu().numpy()


def _bucket_batches(buckets: list[int], sizes: dict[int, int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive groups of whole buckets holding >= batch_size items (the last may be smaller)."""
    cur: list[int] = []
    n = 0
    for b in buckets:
        cur.append(b)
        n += sizes.get(b, 0)
        if n >= batch_size:
            yield cur
            cur, n = [], 0
    if cur:
        yield cur


def _bucket_records(ids: np.ndarray, packed: np.ndarray, n_buckets: int) -> dict[int, tuple[int, int]]:
    """Per bucket (count, checksum) of ids int64 [N] with stored bytes uint8 [N, W]."""
    h = ck.item_hashes(ids, packed)  # uint64 [N]
    order, groups = group_by_bucket(ids, n_buckets)
    hs = h[order]
    return {b: (e - s, ck.combine(hs[s:e])) for b, s, e in groups}


async def project_version(model: Projector, version: str, catalog_ids: np.ndarray | None,
                          catalog: CatalogStore, store: ProjectionStore, shard: tuple[int, int] = (0, 1),
                          batch_size: int = 16_384, incremental: bool = False,
                          device: torch.device | None = None, progress: bool = True,
                          throttle: float = 0.0) -> dict[str, Any]:
    """Project catalog items for `version` into `store`.

    throttle: after each batch, pause `throttle` times as long as the batch took (1.0: half the rate),
    so that a job running beside a serving process leaves Redis and the cores to it most of the time.

    catalog_ids: ids to project (full mode: the whole catalog; None = every id in `catalog`;
    incremental: the new/changed ids). Returns counts and timing; `complete` tells whether the
    version's marker exists after this run.
    """
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if store.version != version:
        raise ValueError(f"store is for version {store.version!r}, not {version!r}")
    if store.dim != model.proj_dim:
        raise ValueError(f"store dim {store.dim} != model.proj_dim {model.proj_dim}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or _model_device(model)
    nb = store.keys.n_buckets
    ids = await catalog.all_ids() if catalog_ids is None else np.unique(check_ids(catalog_ids, "catalog_ids"))
    ids = ids[ids % nb % n == i]  # this shard's buckets only
    t0 = time.perf_counter()
    stats = {"version": version, "shard": f"{i}/{n}", "mode": "incremental" if incremental else "full",
             "items_written": 0, "items_missing": 0, "buckets_done": 0, "buckets_skipped": 0}
    if throttle < 0:
        raise ValueError(f"throttle must be >= 0, got {throttle}")
    run = _run_incremental if incremental else _run_full
    await run(model, ids, catalog, store, shard, batch_size, device, progress, stats, throttle)
    marker = await store.write_marker_if_complete()
    if incremental and ids.size:  # after the data and the marker: scorers that see the generation see both
        stats["generation"] = await store.note_changed(ids)
    elif stats["items_written"]:
        stats["generation"] = await store.note_reset()
    secs = time.perf_counter() - t0
    stats.update(seconds=round(secs, 3), items_per_s=round(stats["items_written"] / secs, 1) if secs else 0.0,
                 complete=marker is not None, marker=marker)
    log.info("projector %s", stats)
    return stats


async def _project_batch(model: Projector, ids: np.ndarray, catalog: CatalogStore, device: torch.device,
                         stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids [K] -> (found ids [K'], float16 vecs [K', D], missing ids) via the catalog."""
    raw, found = await catalog.get(ids)
    if not found.all():
        stats["items_missing"] += int((~found).sum())
        log.warning("%d item(s) not in the catalog, not projected (e.g. %s)",
                    int((~found).sum()), ids[~found][:5].tolist())
    vecs = await asyncio.to_thread(project_array, model, raw[found], device)
    return ids[found], vecs, ids[~found]


async def _run_full(model: Projector, ids: np.ndarray, catalog: CatalogStore, store: ProjectionStore,
                    shard: tuple[int, int], batch_size: int, device: torch.device, progress: bool,
                    stats: dict[str, Any], throttle: float = 0.0) -> None:
    i, n = shard
    nb = store.keys.n_buckets
    done = await store.done_buckets()
    mine = [b for b in range(nb) if b % n == i]
    todo = [b for b in mine if b not in done]
    stats["buckets_skipped"] = len(mine) - len(todo)
    order, groups = group_by_bucket(ids, nb)
    sorted_ids = ids[order]
    span = {b: (s, e) for b, s, e in groups}
    sizes = {b: e - s for b, (s, e) in span.items()}
    total = sum(sizes.get(b, 0) for b in todo)
    batches = list(_bucket_batches(todo, sizes, batch_size))

    async def prepare(batch: list[int]) -> tuple[list[int], int, np.ndarray, np.ndarray]:
        bids = np.concatenate([sorted_ids[span[b][0]:span[b][1]] for b in batch if b in span] or
                              [np.zeros(0, np.int64)])
        got, vecs, _ = await _project_batch(model, bids, catalog, device, stats)
        return batch, bids.size, got, vecs

    # Double buffering: batch k+1 is read and projected (worker thread) while batch k is written.
    nxt = asyncio.ensure_future(prepare(batches[0])) if batches else None
    try:
        with tqdm(total=total, unit="item", desc=f"project {store.version} {i}/{n}", disable=not progress) as bar:
            for k in range(len(batches)):
                t_batch = time.perf_counter()
                batch, n_ids, got, vecs = await nxt
                nxt = asyncio.ensure_future(prepare(batches[k + 1])) if k + 1 < len(batches) else None
                packed = np.ascontiguousarray(vecs, dtype=PROJ_DTYPE).view(np.uint8)  # [K, 2D]
                await store.put_buckets(got, vecs)
                records = _bucket_records(got, packed, nb)
                empty = [b for b in batch if b not in records]
                await store.clear_buckets(empty)  # a bucket with no items must hold nothing
                records.update({b: (0, 0) for b in empty})
                await store.mark_done(records)  # only after its data is written
                stats["items_written"] += int(got.size)
                stats["buckets_done"] += len(batch)
                bar.update(n_ids)
                if throttle:
                    await asyncio.sleep(throttle * (time.perf_counter() - t_batch))
    finally:
        if nxt is not None:  # a failed batch: stop the prefetch and collect its outcome
            nxt.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await nxt


async def _run_incremental(model: Projector, ids: np.ndarray, catalog: CatalogStore, store: ProjectionStore,
                           shard: tuple[int, int], batch_size: int, device: torch.device, progress: bool,
                           stats: dict[str, Any], throttle: float = 0.0) -> None:
    touched: set[int] = set()
    with tqdm(total=ids.size, unit="item", desc=f"reproject {store.version}", disable=not progress) as bar:
        for lo in range(0, ids.size, batch_size):
            t_batch = time.perf_counter()
            bids = ids[lo:lo + batch_size]
            got, vecs, gone = await _project_batch(model, bids, catalog, device, stats)
            await store.put(got, vecs)
            if gone.size:  # no longer in the catalog: its projection must not be served
                await store.delete_items(gone)
            touched.update((bids % store.keys.n_buckets).tolist())
            stats["items_written"] += int(got.size)
            bar.update(bids.size)
            if throttle:
                await asyncio.sleep(throttle * (time.perf_counter() - t_batch))
    # Refresh the records of buckets a full run already finished (others get done by that run).
    done = await store.done_buckets()
    refresh = sorted(b for b in touched if b in done)
    for lo in range(0, len(refresh), 16):
        chunk = refresh[lo:lo + 16]
        recs = {}
        for b, (bids, vals) in zip(chunk, await store.read_buckets(chunk)):
            recs[b] = (int(bids.size), ck.checksum(bids, vals))
        await store.mark_done(recs)
    stats["buckets_done"] = len(refresh)


# ---- CLI ------------------------------------------------------------------------------------
def _parse_shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {s!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {s!r}")
    return i, n


def _read_ids(path: str) -> np.ndarray:
    """A .npy int array or a text file with one id per line."""
    if path.endswith(".npy"):
        return check_ids(np.load(path, allow_pickle=False).ravel(), path)
    return check_ids(np.loadtxt(path, dtype=np.int64, ndmin=1), path)


async def _cli(args: argparse.Namespace) -> dict[str, Any]:
    from cache.connection import open_redis
    from cache.layout import Keys
    from cache.projection_store import delete_version
    from model_store.registry import ModelRegistry  # lazy: the job is usable without it in tests

    keys = Keys(prefix=args.key_prefix, n_buckets=args.n_buckets)
    h = await open_redis(args.redis_url)
    try:
        if args.delete_version:
            return {"deleted_keys": await delete_version(h.client, keys, args.delete_version)}
        reg = ModelRegistry(args.registry)
        version = args.version or reg.active()
        if not version:
            raise SystemExit("no --version given and the registry has no active version")
        model, _ = reg.load(version)
        device = best_device() if args.device == "auto" else torch.device(args.device)
        model = model.to(device).eval()
        catalog = CatalogStore(h.client, keys, n_features=len(model.cfg.schema.inherent))
        store = ProjectionStore(h.client, keys, version, model.proj_dim)
        ids = _read_ids(args.incremental_ids) if args.incremental_ids else None
        return await project_version(model, version, ids, catalog, store, shard=args.shard,
                                     batch_size=args.batch_size, incremental=ids is not None,
                                     device=device, progress=not args.no_progress, throttle=args.throttle)
    finally:
        await h.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cache.projector", description=__doc__.split("\n")[0])
    p.add_argument("--registry", required=False, help="model registry directory (model_store)")
    p.add_argument("--version", help="model version (default: the registry's active one)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                   help="redis[s]://, redis+cluster:// (default: $REDIS_URL)")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), help="i/n: this process's share")
    p.add_argument("--incremental-ids", help="re-project only these ids (.npy or one id per line)")
    p.add_argument("--batch-size", type=int, default=16_384)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    p.add_argument("--key-prefix", default="twin")
    p.add_argument("--n-buckets", type=int, default=256)
    p.add_argument("--delete-version", help="garbage-collect this version's projections and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="raise this process's niceness first (0-19)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--throttle", type=float, default=0.0,
                   help="after each batch, pause this many times its duration (1.0: half the rate)")
    args = p.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.redis_url:
        p.error("--redis-url (or REDIS_URL) is required: an embedded Redis would vanish when the job exits")
    if not args.delete_version and not args.registry:
        p.error("--registry is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = asyncio.run(_cli(args))
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
