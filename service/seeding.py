"""Loading a world into Redis for the service: catalog rows, behavior histories, projections.

Used by the demo bootstrap, the service benchmark and the service tests, so all three exercise the
same store calls the service reads back.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

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
