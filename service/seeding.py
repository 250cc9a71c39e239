"""Loading a world into Redis for the service: catalog rows, behavior histories, projections.

Used by the demo bootstrap, the service benchmark and the service tests, so all three exercise the
same store calls the service reads back.

Load-test worlds (DESIGN.md sec. 4 workloads): `WORLDS` gives each profile N users whose logs hold
exactly L behaviors. The histories are drawn by the demo data set's own generator on its catalog
(training/worlds.py, run as `python -m training.cli world` in a child process: serving does not
import the training package) into a behaviors file beside the data set, then written with
BehaviorStore.write_history (one pipelined round trip per chunk of users).
"""
from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from cache.behavior_store import BehaviorBlock, BehaviorStore
from cache.catalog_store import CatalogStore
from cache.layout import Keys
from cache.projection_store import ProjectionStore
from cache.projector import project_version

log = logging.getLogger(__name__)


async def load_catalog(client, keys: Keys, item_ids: np.ndarray, raw: np.ndarray, chunk: int = 100_000) -> None:
    """item_ids int64 [N], raw int64 [N, F_h] (schema.inherent order) -> the catalog."""
    cat = CatalogStore(client, keys, raw.shape[1])
    for lo in range(0, len(item_ids), chunk):
        await cat.put(item_ids[lo:lo + chunk], raw[lo:lo + chunk])


async def load_histories(client, keys: Keys, n_cross: int, user_ids: Sequence[int], blocks: Sequence[BehaviorBlock],
                         cap: int = 100_000, chunk: int = 256) -> None:
    """Replace each user's log with its block (newest first, as BehaviorStore.read_newest returns)."""
    store = BehaviorStore(client, keys, n_cross, cap=cap)
    for lo in range(0, len(user_ids), chunk):
        await store.write_history(list(user_ids[lo:lo + chunk]), list(blocks[lo:lo + chunk]))


async def project(client, keys: Keys, model, version: str, n_features: int, progress: bool = False) -> dict:
    """Project the whole catalog for `version` (writes the completion marker)."""
    cat = CatalogStore(client, keys, n_features)
    store = ProjectionStore(client, keys, version, model.proj_dim)
    return await project_version(model, version, None, cat, store, progress=progress)


@dataclass(frozen=True)
class World:
    """A load-test world: users first_user_id .. first_user_id + n_users - 1, each with exactly
    seq_len behaviors. Ids start far above the demo users (1..N, N in the thousands)."""

    name: str
    seq_len: int  # L
    n_users: int
    first_user_id: int

    @property
    def last_user_id(self) -> int:
        return self.first_user_id + self.n_users - 1


# sized for a 2-core box: 2M / 3M / 2M behaviors (48 / 72 / 48 MB in Redis), seeded in seconds
WORLDS: dict[str, World] = {
    "W1": World("W1", seq_len=10_000, n_users=200, first_user_id=1_000_001),
    "W2": World("W2", seq_len=100_000, n_users=30, first_user_id=2_000_001),
    "W3": World("W3", seq_len=10_000, n_users=200, first_user_id=3_000_001),
}


def get_world(name: str) -> World:
    key = name.strip().upper()
    if key not in WORLDS:
        raise ValueError(f"unknown world {name!r}; expected one of {sorted(WORLDS)}")
    return WORLDS[key]


def read_blocks(path: str | Path, cross_names: Sequence[str]) -> tuple[list[int], list[BehaviorBlock]]:
    """(user ids, BehaviorBlocks newest first) from a behaviors file (docs/contracts.md: user_id,
    item_id, ts, cross columns; sorted by user, then ts)."""
    t = pq.read_table(path)
    missing = [n for n in cross_names if n not in t.column_names]
    if missing:
        raise ValueError(f"{path}: the model's stored cross features {missing} are not in the behaviors "
                         f"(columns {t.column_names}); the data must come from the model's own generator")
    users = t.column("user_id").to_numpy()
    item = t.column("item_id").to_numpy().astype(np.int64)
    ts = t.column("ts").to_numpy().astype(np.int64)
    cross = np.stack([t.column(n).to_numpy().astype(np.float32) for n in cross_names], axis=1)  # [n, J_s]
    cuts = np.flatnonzero(np.diff(users)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(users)]
    ids, blocks = [], []
    for s, e in zip(starts, ends):
        ids.append(int(users[s]))
        blocks.append(BehaviorBlock(item_id=item[s:e][::-1].copy(), ts=ts[s:e][::-1].copy(),
                                    cross=cross[s:e][::-1].copy(), total=int(e - s)))
    return ids, blocks


def write_world_file(data_dir: Path, world: World) -> Path:
    """The world's behaviors file beside the data set (data_dir/world-{name}.parquet), drawn by the
    training package's generator in a child process (`python -m training.cli world`) when it is
    missing or older than the data set; deterministic, so it is drawn once per data set."""
    out = data_dir / f"world-{world.name}.parquet"
    if not out.exists() or out.stat().st_mtime < (data_dir / "schema.json").stat().st_mtime:
        subprocess.run([sys.executable, "-m", "training.cli", "world", "--data", str(data_dir),
                        "--seq-len", str(world.seq_len), "--users", str(world.n_users),
                        "--first-user", str(world.first_user_id), "--out", str(out)], check=True)
    return out


async def seed_world(client, keys: Keys, world_file: str | Path, world: World, cross_names: Sequence[str],
                     cap: int = 100_000, progress: bool = False, chunk: int = 64) -> int:
    """Replace the logs of the world's users with the L-behavior histories of world_file (so a re-run
    also undoes the events a previous load test appended). Returns the number of behaviors written."""
    if world.seq_len > cap:
        raise ValueError(f"world {world.name}: L={world.seq_len} exceeds the behavior-log cap {cap}")
    ids, blocks = read_blocks(world_file, cross_names)
    want = list(range(world.first_user_id, world.last_user_id + 1))
    if ids != want or any(b.total != world.seq_len for b in blocks):
        raise ValueError(f"{world_file} does not hold world {world.name} (users {world.first_user_id:,}.."
                         f"{world.last_user_id:,} x {world.seq_len:,} behaviors): draw it again")
    store = BehaviorStore(client, keys, len(cross_names), cap=cap)
    written = 0
    with tqdm(total=world.n_users, desc=f"world {world.name} (L={world.seq_len:,})", unit="user",
              disable=not progress) as bar:
        for lo in range(0, len(ids), chunk):
            await store.write_history(ids[lo:lo + chunk], blocks[lo:lo + chunk])
            written += sum(len(b) for b in blocks[lo:lo + chunk])
            bar.update(len(ids[lo:lo + chunk]))
    log.info("seeded world %s: %d users x %d behaviors", world.name, world.n_users, world.seq_len)
    return written
