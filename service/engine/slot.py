"""One loaded model version and everything bound to it: the model on its device, its shape buckets,
the stores that read under its projection namespace and the caches of what they read (projections
and user sequences hold per-version projections, so a new slot starts them empty). A batch carries
its slot, so in-flight requests finish on the version they started with while a new slot is switched in."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from service.engine.gsu_route import GsuRoutes
from twin.config import FeatureSchema, TwinConfig

if TYPE_CHECKING:
    from cache.behavior_store import BehaviorStore
    from cache.catalog_cache import CatalogRowCache
    from cache.catalog_store import CatalogStore
    from cache.local_cache import LocalProjectionCache
    from cache.user_sequence_cache import UserSequenceCache
    from model_store.manifest import Manifest
    from twin.model import TwinCTR


@dataclass(eq=False)
class ModelSlot:
    version: str
    model: "TwinCTR"
    manifest: "Manifest"
    device: torch.device
    autocast: torch.dtype | None  # float16 autocast on CUDA, None = plain float32
    seq_len: int                  # L: behaviors read per user
    seq_buckets: list[int]
    cand_buckets: list[int]
    behaviors: "BehaviorStore"
    catalog: "CatalogStore"
    local_cache: "LocalProjectionCache"
    user_cache: "UserSequenceCache | None" = None      # None = disabled (TWIN_USER_CACHE_MB=0)
    catalog_cache: "CatalogRowCache | None" = None     # None = disabled (TWIN_CATALOG_CACHE_CAPACITY=0)
    warm: bool = False
    meta: dict = field(default_factory=dict)
    # CPU: alpha's buffer per inference/branch thread id, reused by every batch of this slot.
    alpha_scratch: dict[int, torch.Tensor] = field(default_factory=dict)
    # CPU: which exact GSU path each shape runs, measured at warm-up (empty: the fused default)
    gsu_routes: GsuRoutes = field(default_factory=GsuRoutes)

    @property
    def catalog_rows(self) -> "CatalogRowCache | CatalogStore":
        """Where catalog rows are read: the row cache, or Redis when it is disabled (same get contract)."""
        return self.catalog_cache if self.catalog_cache is not None else self.catalog

    @property
    def cfg(self) -> TwinConfig:
        return self.model.cfg

    @property
    def schema(self) -> FeatureSchema:
        return self.model.cfg.schema

    @property
    def inherent_names(self) -> list[str]:
        return self.schema.inherent_names

    @property
    def cross_names(self) -> list[str]:
        return self.schema.stored_cross_names()

    @property
    def short_len(self) -> int:
        return self.model.cfg.short_len
