"""Inherent raw features of every item (int64[F_h] in schema.inherent order), in Redis.

Layout: P:item:{b<bucket>} hash, field = item id, value = int64[F_h] little-endian (8*F_h bytes).
The catalog is shared by every model version (it is data, not a model output).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cache.bucket_map import BucketHashMap
from cache.layout import RAW_DTYPE, Keys


class CatalogStore:
    """put/get raw inherent features; a miss is found=False with a zero row."""

    def __init__(self, client: Any, keys: Keys, n_features: int) -> None:
        if n_features < 1:
            raise ValueError(f"n_features (F_h) must be >= 1, got {n_features}")
        self.keys = keys
        self.n_features = n_features
        self._map = BucketHashMap(client, keys.item_buckets(), n_features * RAW_DTYPE.itemsize)

    async def put(self, item_ids: np.ndarray, raw: np.ndarray) -> None:
        """item_ids int64 [N], raw int64 [N, F_h]"""
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[1] != self.n_features:
            raise ValueError(f"raw must have shape [N, {self.n_features}], got {raw.shape}")
        packed = np.ascontiguousarray(raw, dtype=RAW_DTYPE).view(np.uint8)  # [N, 8*F_h]
        await self._map.put(item_ids, packed)

    async def get(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (raw int64 [N, F_h], found bool [N]) in request order; one round trip."""
        vals, found = await self._map.get(item_ids)
        return vals.view(RAW_DTYPE).reshape(-1, self.n_features), found

    async def stored_width(self, max_buckets: int = 16) -> int | None:
        """Bytes of one stored row, sampled (HRANDFIELD) from the first non-empty of up to max_buckets
        buckets; None when they are all empty. A model whose schema wants another width cannot read
        this catalog (each row must be exactly 8 * n_features bytes)."""
        pipe = self._map.client.pipeline(transaction=False)
        for key in self._map.keys[:max_buckets]:
            pipe.execute_command("HRANDFIELD", key, 1, "WITHVALUES")
        for reply in await pipe.execute():
            if reply:  # [field, value], or [[field, value]] where redis-py pairs them up
                value = reply[0][1] if isinstance(reply[0], list | tuple) else reply[1]
                return len(value)
        return None

    async def all_ids(self) -> np.ndarray:
        """Every item id in the catalog, sorted int64 [M] (the projector's default work list)."""
        return await self._map.all_ids()
