"""The manifest: everything needed to trust and rebuild one model version, as JSON.

`manifest.json` sits next to `model.safetensors`. It carries the full `TwinConfig.to_dict()`
(feature schema, vocab sizes, architecture), so loading rebuilds the model from data, never code.
"""
from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from model_store.errors import ArtifactError
from twin.config import TwinConfig

FORMAT_VERSION = 1
# A config whose `extra` holds this key is one of training's long-sequence baselines (SIM, ETA, SDIM...,
# training/long_sequence_baselines.py): a model serving cannot run. Publishing and loading refuse it.
TRAINING_ONLY_KEY = "long_sequence_baseline"
# "YYYYMMDD-NNNN": UTC date + per-day sequence (4 digits, more past 9999); see version_sort_key.
VERSION_RE = re.compile(r"^(\d{8})-(\d{4,})$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def make_version(day: date, seq: int) -> str:
    if seq < 1:
        raise ValueError(f"version sequence must be >= 1, got {seq}")
    return f"{day:%Y%m%d}-{seq:04d}"


def parse_version(version: str) -> tuple[str, int]:
    """'20261129-0001' -> ('20261129', 1); ValueError naming the value otherwise."""
    m = VERSION_RE.match(version)
    if m is None:
        raise ValueError(f"bad version id {version!r}: expected 'YYYYMMDD-NNNN'")
    return m.group(1), int(m.group(2))


def version_sort_key(version: str) -> tuple[str, int]:
    # numeric sequence, so '-10000' sorts after '-9999' even though it is longer
    return parse_version(version)


def _check_json_safe(value: Any, where: str) -> None:
    """Strict JSON only: finite numbers, string keys (NaN would write invalid JSON)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is not finite: {value!r}")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}")
            _check_json_safe(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json_safe(v, f"{where}[{i}]")
        return
    raise ValueError(f"{where} is not JSON-serializable: {type(value).__name__}")


class Manifest(BaseModel):
    """One model version's metadata. Frozen; unknown fields are refused (a typo or tampering)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    version: str
    created_at: datetime  # UTC, written as ISO 8601 with 'Z'
    config: dict[str, Any]  # TwinConfig.to_dict(): schema, vocab sizes, architecture
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str = Field(min_length=1)
    weights_sha256: str
    weights_bytes: int = Field(ge=0)
    n_tensors: int = Field(ge=0)
    n_params: int = Field(ge=0)
    torch_version: str
    parent: str | None = None
    notes: str = ""

    @field_validator("version", "parent")
    @classmethod
    def _version_format(cls, v: str | None) -> str | None:
        if v is not None:
            parse_version(v)
        return v

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError(f"created_at must carry a timezone (UTC), got {v.isoformat()!r}")
        return v.astimezone(timezone.utc)

    @field_validator("weights_sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not SHA256_RE.match(v):
            raise ValueError(f"weights_sha256 must be 64 lowercase hex digits, got {v!r}")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The config is untrusted data and TwinConfig.from_dict is a constructor, not a validator: a
        # malformed part (`"schema": "garbage"`) fails inside it with whatever the first operation on it
        # raises (AttributeError, TypeError, ...). Every one of those is a refused manifest, not a bug.
        try:
            TwinConfig.from_dict(v)
        except Exception as e:  # noqa: BLE001 - see above
            raise ValueError(f"config does not rebuild a TwinConfig: {type(e).__name__}: {e}") from e
        extra = v.get("extra")
        baseline = extra.get(TRAINING_ONLY_KEY) if isinstance(extra, dict) else None
        if baseline:
            raise ValueError(f"config is the training-only long-sequence baseline {baseline!r} "
                             "(training/long_sequence_baselines.py): serving runs TWIN models only")
        _check_json_safe(v, "config")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_json_safe(v, "metrics")
        return v

    @field_serializer("created_at")
    def _ser_created(self, v: datetime) -> str:
        return v.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def twin_config(self) -> TwinConfig:
        return TwinConfig.from_dict(self.config)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest.json") -> "Manifest":
        """Parse and validate; every failure is an ArtifactError that names `source` and the field."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{source}: not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: unsupported format_version {data.get('format_version')!r} (this reader knows {FORMAT_VERSION})"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
            raise ArtifactError(f"{source}: invalid manifest: {problems}") from e
