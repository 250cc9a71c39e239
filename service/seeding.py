"""Loading a world into Redis for the service: catalog rows, behavior histories, projections.

Used by the demo bootstrap, the service benchmark and the service tests, so all three exercise the
same store calls the service reads back.

Load-test worlds (DESIGN.md sec. 4 workloads): `WORLDS` gives each profile N users whose logs hold
exactly L behaviors. Histories come from training.synthetic's own user model (interests, dormant
tastes, explorations, play_ratio/liked, sorted timestamps over a ~1 year span) run with a preset
override of the history length (median = min = cap = L, sigma 0), on the same catalog as the demo
data (rebuilt from the data set's recorded config and seed), so they look like the demo users'
histories, only longer. ~2 us per behavior to generate; written with BehaviorStore.write_history
(one pipelined round trip per chunk of ~200k behaviors).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
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
CHUNK_BEHAVIORS = 200_000  # per generate+write step: bounds the generator's [n, K] temporaries (~0.2 GB)


def get_world(name: str) -> World:
    key = name.strip().upper()
    if key not in WORLDS:
        raise ValueError(f"unknown world {name!r}; expected one of {sorted(WORLDS)}")
    return WORLDS[key]


def world_histories(data_cfg, world: World, cross_names: Sequence[str],
                    chunk_behaviors: int = CHUNK_BEHAVIORS) -> Iterator[tuple[list[int], list[BehaviorBlock]]]:
    """(user ids, BehaviorBlocks newest first) of `world`, a chunk of users at a time.

    data_cfg: the training.synthetic.SyntheticConfig that generated the demo catalog (same items).
    Deterministic: the same config and world give the same histories."""
    from training import synthetic

    cfg = replace(data_cfg, hist_median=world.seq_len, hist_sigma=0.0, hist_min=world.seq_len,
                  hist_cap=world.seq_len)
    cat = synthetic.make_catalog(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
    per_chunk = max(1, chunk_behaviors // world.seq_len)
    for ci, lo in enumerate(range(0, world.n_users, per_chunk)):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, world.first_user_id, ci]))
        ids = np.arange(lo, min(lo + per_chunk, world.n_users), dtype=np.int64) + world.first_user_id
        beh = synthetic.make_behaviors(cfg, cat, synthetic.make_users(cfg, cat, ids, rng), rng)
        missing = [n for n in cross_names if n not in beh]
        if missing:
            raise ValueError(f"the model's stored cross features {missing} are not produced by the synthetic "
                             f"user model (it has {sorted(beh)}); worlds need a model trained on synthetic data")
        cross = np.stack([beh[n] for n in cross_names], axis=1).astype(np.float32)  # [n, J_s]
        blocks = []
        for j in range(len(ids)):  # rows are contiguous per user, oldest first
            sl = slice(j * world.seq_len, (j + 1) * world.seq_len)
            blocks.append(BehaviorBlock(item_id=beh["item_id"][sl][::-1].copy(), ts=beh["ts"][sl][::-1].copy(),
                                        cross=cross[sl][::-1].copy(), total=world.seq_len))
        yield ids.tolist(), blocks


async def seed_world(client, keys: Keys, data_cfg, world: World, cross_names: Sequence[str],
                     cap: int = 100_000, progress: bool = False) -> int:
    """Replace the logs of the world's users with fresh L-behavior histories (so a re-run also undoes
    the events a previous load test appended). Returns the number of behaviors written."""
    if world.seq_len > cap:
        raise ValueError(f"world {world.name}: L={world.seq_len} exceeds the behavior-log cap {cap}")
    store = BehaviorStore(client, keys, len(cross_names), cap=cap)
    written = 0
    with tqdm(total=world.n_users, desc=f"world {world.name} (L={world.seq_len:,})", unit="user",
              disable=not progress) as bar:
        for ids, blocks in world_histories(data_cfg, world, cross_names):
            await store.write_history(ids, blocks)
            written += sum(len(b) for b in blocks)
            bar.update(len(ids))
    log.info("seeded world %s: %d users x %d behaviors", world.name, world.n_users, world.seq_len)
    return written
