"""Demo initialisation: `python -m service.bootstrap [--data DIR] [--users N] [--world W1|W2|W3]`.

1. If the registry at TWIN_MODEL_ROOT has no version: generate the synthetic "ci" data set (once,
   into --data) and train a small TWIN model with the training package, publish and activate it.
   If it has versions but none active, the newest is activated. An active version that this code
   cannot load (published by an older model code) is replaced by a freshly trained one.
2. Load the catalog (items.parquet) and the users' behavior logs (behaviors.parquet) into Redis
   (REDIS_URL, or the embedded server on TWIN_EMBEDDED_REDIS_DIR), unless the catalog is loaded.
3. Project the catalog for the active version (skipped when its marker exists and a sample of the
   stored projections equals this model's: version names restart per registry).
4. With --world: seed that load-test world (service.seeding.WORLDS: N users of exactly L behaviors
   each, drawn once by the demo data set's generator on its catalog in a child process, ids far
   above the demo users'), replacing those users' logs on every run. Serve it with TWIN_MAX_SEQ_LEN=L.
5. Print what was loaded and a ready-to-paste curl. The last "bootstrap done" line is parsed by
   scripts/run_stack.sh: "... model V, [world W1: ]N users (first user id F, ...), M items".
`python -m service --bootstrap` runs this (demo world only), then serves, in one process.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from model_store.errors import ArtifactError
from model_store.registry import ModelRegistry
from service.seeding import WORLDS
from service.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_DATA = Path("var/demo_data")


def train_demo_model(registry: ModelRegistry, data_dir: Path, users: int) -> str:
    """Generate the demo data set and train the demo model with the training package's CLI, in a
    child process (serving does not import the trainer): its full setup (early stopping on
    validation), the plain references measured beside it and written into the manifest's metrics."""
    cli = [sys.executable, "-m", "training.cli"]
    if not (data_dir / "samples.parquet").exists():
        print(f"generating the synthetic 'ci' data set ({users} users) into {data_dir} ...")
        subprocess.run([*cli, "generate", "--preset", "ci", "--users", str(users), "--out", str(data_dir)], check=True)
    print("training a small demo TWIN model (early stopping on validation) ...")
    subprocess.run([*cli, "train", "--data", str(data_dir), "--variants", "twin", "--out-registry", str(registry.root),
                    "--activate", "--max-len", "2000", "--epochs", "10", "--evals-per-epoch", "1", "--patience", "2",
                    "--threads", str(torch.get_num_threads())], check=True)
    version = registry.active()
    if version is None:
        raise RuntimeError(f"the demo training published no active model in {registry.root}")
    m = registry.get(version).metrics
    print(f"published and activated demo model {version}: test AUC {m['test_auc']:.4f}, GAUC {m['test_gauc']:.4f}")
    return version


async def _projections_match(model, store, raw: np.ndarray) -> bool:
    """Do the stored projections of these catalog rows (int64 [n, F_h]) equal this model's?"""
    with torch.inference_mode():
        want = model.project_items(torch.from_numpy(raw)).half().float().numpy()  # [n, D]
    got, found = await store.get(raw[:, 0])
    return bool(found.all()) and np.allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-3)


async def load_stores(settings: Settings, registry: ModelRegistry, version: str, data_dir: Path,
                      world: str | None = None) -> dict:
    from cache.catalog_store import CatalogStore
    from cache.connection import open_redis
    from cache.layout import Keys
    from cache.projection_store import ProjectionStore, delete_version
    from service.seeding import get_world, load_catalog, load_histories, project, read_blocks, seed_world, write_world_file

    model, _ = registry.load(version)
    schema = model.cfg.schema
    keys = Keys(prefix=settings.redis_prefix, n_buckets=settings.redis_buckets)
    emb_dir = str(settings.embedded_redis_dir) if settings.embedded_redis_dir else None
    h = await open_redis(settings.redis_url, embedded_dir=emb_dir)
    try:
        cat = CatalogStore(h.client, keys, len(schema.inherent))
        have = await cat.all_ids()
        items = pq.read_table(data_dir / "items.parquet")
        raw = np.stack([items.column(n).to_numpy().astype(np.int64) for n in schema.inherent_names], axis=1)
        user_ids, blocks = read_blocks(data_dir / "behaviors.parquet", schema.stored_cross_names())
        if len(have) < len(raw):
            print(f"loading {len(raw):,} items and {len(user_ids):,} behavior logs into Redis ({h.url}) ...")
            await load_catalog(h.client, keys, raw[:, 0], raw)
            for lo in tqdm(range(0, len(user_ids), 256), desc="behavior logs", unit="x256"):
                await load_histories(h.client, keys, len(schema.stored_cross_names()), user_ids[lo:lo + 256],
                                     blocks[lo:lo + 256], cap=settings.behavior_cap)
        store = ProjectionStore(h.client, keys, version, model.proj_dim)
        if await store.read_marker() is not None and not await _projections_match(model, store, raw[:64]):
            # version names restart per registry: a Redis kept from another registry may hold another
            # model's projections under this model's version name
            print(f"the stored projections of {version} are not this model's: re-projecting")
            await delete_version(h.client, keys, version)
        if await store.read_marker() is None:
            print(f"projecting the catalog for {version} ...")
            await project(h.client, keys, model, version, len(schema.inherent), progress=True)
        lengths = np.array([b.total for b in blocks])
        demo_user = user_ids[int(np.argmin(np.abs(lengths - np.median(lengths))))]
        info = {"items": len(raw), "users": len(user_ids), "median_history": int(np.median(lengths)),
                "first_user": min(user_ids), "last_user": max(user_ids), "demo_user": demo_user,
                "demo_items": raw[:3, 0].tolist(), "world": None}
        if world is not None:
            w = get_world(world)
            if w.first_user_id <= info["last_user"]:
                raise ValueError(f"world {w.name} starts at user id {w.first_user_id:,}, inside the demo users "
                                 f"1..{info['last_user']:,}: generate fewer demo users")
            t0 = time.perf_counter()
            n = await seed_world(h.client, keys, write_world_file(data_dir, w), w, schema.stored_cross_names(), cap=settings.behavior_cap,
                                 progress=True)
            print(f"seeded world {w.name}: users {w.first_user_id:,}..{w.last_user_id:,} x {w.seq_len:,} behaviors "
                  f"({n:,} in all) in {time.perf_counter() - t0:.1f}s; demo users "
                  f"{info['first_user']}..{info['last_user']} kept")
            info.update(world=w.name, seq_len=w.seq_len, demo_users=info["users"], users=w.n_users,
                        first_user=w.first_user_id, last_user=w.last_user_id, demo_user=w.first_user_id)
        return info
    finally:
        await h.aclose()


async def check_redis(settings: Settings) -> None:
    """Fail fast, before minutes of training: Redis answers with these credentials."""
    from cache.connection import open_redis

    emb_dir = str(settings.embedded_redis_dir) if settings.embedded_redis_dir else None
    h = await open_redis(settings.redis_url, embedded_dir=emb_dir)
    try:
        await h.client.ping()
    finally:
        await h.aclose()


def run_or_exit(settings: Settings, data_dir: Path = DEFAULT_DATA, users: int = 600, world: str | None = None) -> dict:
    """run_bootstrap for the command lines: a store that cannot be reached or refuses us ends the
    process with one line naming the cause (cache.errors.describe) and exit status 1, not a traceback."""
    from redis.exceptions import RedisError

    from cache.errors import describe

    try:
        return run_bootstrap(settings, data_dir, users, world)
    except (RedisError, OSError) as e:
        raise SystemExit(f"bootstrap failed: {describe(e)}") from None


def run_bootstrap(settings: Settings, data_dir: Path = DEFAULT_DATA, users: int = 600, world: str | None = None) -> dict:
    t0 = time.perf_counter()
    asyncio.run(check_redis(settings))
    torch.set_num_threads(settings.torch_threads or torch.get_num_threads())
    registry = ModelRegistry(settings.model_root)
    version = registry.active()
    if version is None:
        versions = registry.list()
        if versions:
            version = versions[-1].version
            registry.activate(version)
            print(f"activated the newest published version {version}")
        else:
            version = train_demo_model(registry, data_dir, users)
    try:
        registry.load(version)
    except ArtifactError as e:  # e.g. published by an older model code: the demo needs one that loads
        print(f"active model {version} does not load with this code ({e}); training a fresh demo model")
        version = train_demo_model(registry, data_dir, users)
    if not (data_dir / "items.parquet").exists():
        print(f"generating the synthetic 'ci' data set into {data_dir} for the catalog and behavior logs ...")
        subprocess.run([sys.executable, "-m", "training.cli", "generate", "--preset", "ci", "--users", str(users),
                        "--out", str(data_dir)], check=True)
    info = asyncio.run(load_stores(settings, registry, version, data_dir, world))
    body = {"user_id": info["demo_user"], "candidates": [{"item_id": i} for i in info["demo_items"]], "explain": False}
    if info["world"] is None:
        what = (f"{info['users']:,} users (first user id {info['first_user']}, "
                f"median history {info['median_history']})")
    else:
        what = (f"world {info['world']}: {info['users']:,} users (first user id {info['first_user']}, "
                f"history {info['seq_len']:,} each)")
    print(f"\nbootstrap done in {time.perf_counter() - t0:.0f}s: model {version}, {what}, {info['items']:,} items\n")
    if info["world"] is not None:
        print(f"serve it with TWIN_MAX_SEQ_LEN={info['seq_len']} (scorers read at most the model's training "
              f"length otherwise); load-test users {info['first_user']}..{info['last_user']}")
    print(f"curl -s -X POST http://{settings.host}:{settings.port}/v1/score -H 'Content-Type: application/json' "
          f"-d '{json.dumps(body)}'\n")
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m service.bootstrap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="synthetic data directory (created if missing)")
    ap.add_argument("--users", type=int, default=600, help="users of the generated demo data set")
    ap.add_argument("--world", type=str.upper, choices=sorted(WORLDS),
                    help="also seed this load-test world (default: the demo world only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_or_exit(Settings(), args.data, args.users, args.world)


if __name__ == "__main__":
    main()
