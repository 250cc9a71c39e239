"""One model version on disk: `model.safetensors` (weights) + `manifest.json` (config, checksums).

Safety: weights are read with safetensors (a JSON header + raw buffers), never pickle / torch.load,
so loading executes no code. The sha256 is checked on every load against the exact bytes that are
then deserialized (no window between checking and reading). The model is rebuilt from the manifest
config and must match the weights tensor for tensor (names, shapes, dtypes), else it is refused.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from model_store.errors import ArtifactError
from model_store.fsutil import fsync_dir, write_durable
from model_store.manifest import Manifest
from twin.config import TwinConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
_MAX_LISTED = 8  # problems named in one error message

ModelBuilder = Callable[[TwinConfig], nn.Module]


def build_twin(cfg: TwinConfig) -> nn.Module:
    """Default builder: the TWIN CTR model (imported lazily so the store imports without torch models)."""
    from twin.model import TwinCTR

    return TwinCTR(cfg)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, one storage per name (safetensors refuses shared storage,
    e.g. tied weights; those are saved twice and re-tied by load_state_dict's copy)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.numel() != t.untyped_storage().nbytes() // max(t.element_size(), 1):
            t = t.clone()  # shares storage with another entry, or is a view into a larger buffer
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def write_artifact(
    directory: Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    version: str,
    config: TwinConfig,
    metrics: Mapping[str, Any],
    data_fingerprint: str,
    parent: str | None = None,
    notes: str = "",
    created_at: datetime | None = None,
) -> Manifest:
    """Write both files into an existing empty `directory`, fsynced. Returns the manifest written."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name!r} holds NaN/inf values; refusing to publish a diverged model")
    # the weights bytes do not depend on the version id, so a publish can renumber by rewriting the manifest
    data = st_save(dict(tensors), metadata={"format": "pt"})
    manifest = Manifest(
        version=version,
        created_at=created_at or datetime.now(timezone.utc),
        config=config.to_dict(),
        metrics=dict(metrics),
        data_fingerprint=data_fingerprint,
        weights_sha256=hashlib.sha256(data).hexdigest(),
        weights_bytes=len(data),
        n_tensors=len(tensors),
        n_params=sum(t.numel() for t in tensors.values()),
        torch_version=torch.__version__,
        parent=parent,
        notes=notes,
    )
    write_durable(directory / WEIGHTS_FILE, data)
    write_durable(directory / MANIFEST_FILE, manifest.to_json().encode())
    fsync_dir(directory)
    return manifest


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    return Manifest.from_json(_read_bytes(path), source=str(path))


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, or an ArtifactError that says whether it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing file") from None
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable: {e}") from e


def quick_check(directory: Path) -> Manifest:
    """Cheap consistency check for listings: manifest valid, weights present with the right size."""
    manifest = read_manifest(directory)
    path = directory / WEIGHTS_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing file") from None
    if size != manifest.weights_bytes:
        raise ArtifactError(f"{path}: size {size} bytes, manifest says {manifest.weights_bytes}")
    return manifest


def read_weights(directory: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """Read, checksum and deserialize the weights (always the same bytes for all three)."""
    path = directory / WEIGHTS_FILE
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.weights_sha256:
        raise ArtifactError(
            f"{path}: checksum mismatch: sha256 {digest}, manifest says {manifest.weights_sha256} "
            f"({len(data)} bytes, manifest says {manifest.weights_bytes})"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path}: not a valid safetensors file: {e}") from e
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{path}: tensor {name!r} holds NaN/inf values")
    return tensors


def check_against_model(tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Names, shapes and dtypes must match the rebuilt model exactly; the error lists what differs."""
    expected = model.state_dict()
    problems = [f"missing tensor {n!r}" for n in expected if n not in tensors]
    problems += [f"unexpected tensor {n!r}" for n in tensors if n not in expected]
    for n, want in expected.items():
        got = tensors.get(n)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"shape mismatch for tensor {n!r}: artifact {list(got.shape)}, model {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"dtype mismatch for tensor {n!r}: artifact {got.dtype}, model {want.dtype}")
    if problems:
        more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise ArtifactError(
            f"{source}: weights do not match the model built from the manifest config: "
            + "; ".join(problems[:_MAX_LISTED]) + more
        )


def load_artifact(directory: Path, build_model: ModelBuilder = build_twin) -> tuple[nn.Module, Manifest]:
    """Verify everything and return (model in eval mode on CPU, manifest). ArtifactError otherwise."""
    manifest = read_manifest(directory)
    tensors = read_weights(directory, manifest)
    try:
        model = build_model(manifest.twin_config())
    except Exception as e:  # noqa: BLE001 - a config that validated but cannot build a model is refused data
        raise ArtifactError(f"{directory / MANIFEST_FILE}: config does not build a model: {type(e).__name__}: {e}") from e
    check_against_model(tensors, model, str(directory / WEIGHTS_FILE))
    model.load_state_dict(tensors, strict=True)
    model.eval()
    log.debug("loaded artifact %s (%d tensors, %d params)", manifest.version, manifest.n_tensors, manifest.n_params)
    return model, manifest
