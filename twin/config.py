"""Frozen configuration of a TWIN CTR model: feature schema + architecture sizes.

The config travels with the weights (model_store writes `to_dict()` into the manifest), so a
loaded artifact rebuilds exactly the model that was trained.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("value", "age_hours")


@dataclass(frozen=True)
class FeatureSpec:
    """One embedded feature.

    name:        column / field name (also the key clients use in `features` and `cross`).
    vocab:       embedding rows. Categorical values are hashed into it with `value % vocab`;
                 bucketized values need `vocab == len(boundaries) + 1`.
    dim:         embedding width (64 for large id vocabularies, 8 otherwise, by convention).
    boundaries:  non-empty -> the raw value is numeric and `torch.bucketize(value, boundaries)`
                 gives the id; empty -> the raw value is already an integer id.
    source:      cross features only. "value": stored with the behavior; "age_hours": derived
                 from the behavior's timestamp and the request time (request_ts - ts) / 3.6e6.
    """

    name: str
    vocab: int
    dim: int
    boundaries: tuple[float, ...] = ()
    source: str = "value"

    def __post_init__(self) -> None:
        if self.vocab < 1 or self.dim < 1:
            raise ValueError(f"feature {self.name!r}: vocab and dim must be >= 1, got {self.vocab}, {self.dim}")
        if self.boundaries and self.vocab != len(self.boundaries) + 1:
            raise ValueError(
                f"feature {self.name!r}: bucketized feature needs vocab == len(boundaries)+1 "
                f"({len(self.boundaries) + 1}), got {self.vocab}"
            )
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"feature {self.name!r}: boundaries must be sorted ascending")
        if self.source not in SOURCES:
            raise ValueError(f"feature {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class FeatureSchema:
    """The feature split of TWIN (paper sec. 3.3).

    inherent: item features shared by every user (K_h), cacheable. The first must be `item_id`.
    cross:    user-item cross features of a behavior (K_c), J of them, one scalar bias each per head.
    context:  request-level features. Two derived ones are understood by the model:
              "hour" (hour of day of the request, vocab 24) and "hist_len" (log2 bucket of the
              user's history length); any others are not supported yet.
    """

    inherent: tuple[FeatureSpec, ...]
    cross: tuple[FeatureSpec, ...]
    context: tuple[FeatureSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.inherent or self.inherent[0].name != "item_id":
            raise ValueError("schema.inherent must start with the 'item_id' feature")
        if not self.cross:
            raise ValueError("schema.cross must hold at least one cross feature (the paper's K_c)")
        names = [f.name for f in self.inherent + self.cross + self.context]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        for f in self.inherent:
            if f.source != "value":
                raise ValueError(f"inherent feature {f.name!r} cannot be derived ({f.source!r})")
        for f in self.context:
            if f.name not in ("hour", "hist_len"):
                raise ValueError(f"context feature {f.name!r} is not supported (use 'hour', 'hist_len')")

    @property
    def inherent_names(self) -> list[str]:
        return [f.name for f in self.inherent]

    def stored_cross_names(self) -> list[str]:
        """Cross values that a behavior record carries (the derived ones are computed)."""
        return [f.name for f in self.cross if f.source == "value"]

    @property
    def inherent_dim(self) -> int:  # H: width of K_h
        return sum(f.dim for f in self.inherent)

    @property
    def cross_dim(self) -> int:  # C = sum of cross dims (8J with the default dims)
        return sum(f.dim for f in self.cross)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSchema":
        def specs(key: str) -> tuple[FeatureSpec, ...]:
            return tuple(
                FeatureSpec(**{**s, "boundaries": tuple(s.get("boundaries", ()))}) for s in d.get(key, ())
            )

        return cls(inherent=specs("inherent"), cross=specs("cross"), context=specs("context"))


@dataclass(frozen=True)
class TwinConfig:
    """Architecture sizes. Symbols used across `twin/`:

    B  batch (samples in training, users in serving)   L  behaviors per sequence (max_len)
    C  candidates per user                             A  heads (n_heads)
    k  behaviors kept by CP-GSU (top_k)                d_k / d_v  per-head key / value width
    H  inherent embedding width                        Cx cross embedding width (8J)
    S  short-term window (short_len)                   D  cached projection width = A*d_k + A*d_v
    """

    schema: FeatureSchema
    n_heads: int = 4
    d_k: int = 16
    d_v: int = 16
    top_k: int = 100
    max_len: int = 10_000
    short_len: int = 50
    d_out: int = 64  # width of the TWIN output after W^o and of the short-term module output
    mlp_dims: tuple[int, ...] = (200, 80)
    cross_bias: bool = True  # ablation switch: False drops b_a from alpha (paper sec. 4.4)
    gsu: str = "twin"  # "twin": CP-GSU top-k of alpha; "recent": the top_k most recent behaviors
    # Beyond the paper: feed the tower the per-head log-sum-exp of alpha over the selected behaviors.
    # The softmax average tells WHAT matched but not how much of the history did.
    evidence: bool = True
    # Beyond the paper (issue "A TWIN that learns"): the per-head log-sum-exp of alpha over the FULL
    # sequence into the tower: how many behaviors match, which the softmax over the k selected hides.
    full_lse: bool = True
    # The user's mean stored cross values over the sequence (e.g. completion, like rate) into the tower.
    user_stats: bool = True
    # N(0, std) init of every embedding table. 0.05 left alpha flat (keys ~0.03) and the attention
    # barely learned on the ci preset (TWIN 0.745 AUC = recent-100); 0.3 gave 0.773 vs 0.760.
    emb_init_std: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.gsu not in ("twin", "recent"):
            raise ValueError(f"gsu must be 'twin' or 'recent', got {self.gsu!r}")
        for name in ("n_heads", "d_k", "d_v", "top_k", "max_len", "short_len", "d_out"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def proj_dim(self) -> int:
        return self.n_heads * (self.d_k + self.d_v)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema"] = self.schema.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TwinConfig":
        d = dict(d)
        # configs written before these switches existed describe models without them
        d.setdefault("full_lse", False)
        d.setdefault("user_stats", False)
        d["schema"] = FeatureSchema.from_dict(d["schema"])
        d["mlp_dims"] = tuple(d.get("mlp_dims", (200, 80)))
        return cls(**d)
