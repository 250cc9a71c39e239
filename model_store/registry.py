"""A directory of model versions with an atomically switched active pointer.

Layout under `root`:
    versions/<version>/{model.safetensors, manifest.json}   complete, immutable versions
    staging/<random>/                                        publishes in progress (never listed)
    trash/                                                   deletions in progress (never listed)
    active.json    {"version", "activated_at", "previous": [older active versions, newest last]}
    history.jsonl  append-only audit log of publish / activate / rollback / delete
    .lock          flock serializing mutations across threads and processes

A version becomes visible only through one `os.rename(staging/x, versions/<version>)` of a fully
written, fsynced directory, so a crashed or concurrent publish never shows a half-written version.
`active.json` is replaced with `os.replace`, so readers see the old pointer or the new one, and the
pointer and its rollback stack always change together.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from model_store.artifact import (
    MANIFEST_FILE,
    ModelBuilder,
    build_twin,
    cpu_state_dict,
    load_artifact,
    quick_check,
    write_artifact,
)
from model_store.errors import ArtifactError, RegistryError, VersionNotFoundError
from model_store.fsutil import fsync_dir, replace_atomic
from model_store.manifest import Manifest, make_version, parse_version, version_sort_key
from twin.config import TwinConfig

log = logging.getLogger(__name__)


class ModelRegistry:
    """Publish, list, load, activate and roll back model versions stored under `root`.

    build_model: rebuilds the nn.Module from a manifest's TwinConfig (default: twin.model.TwinCTR).
    stale_staging_s: gc removes staging dirs older than this (crashed publishes).
    """

    def __init__(self, root: str | os.PathLike[str], build_model: ModelBuilder = build_twin,
                 stale_staging_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.build_model = build_model
        self.stale_staging_s = stale_staging_s
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.trash_dir = self.root / "trash"
        self.active_file = self.root / "active.json"
        self.history_file = self.root / "history.jsonl"
        for d in (self.versions_dir, self.staging_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---- publish -------------------------------------------------------------------------------

    def publish(self, model: nn.Module, *, metrics: Mapping[str, Any], data_fingerprint: str,
                config: TwinConfig | None = None, parent: str | None = None, notes: str = "") -> str:
        """Write `model` as a new version and return its id. Atomic: all of it becomes visible or none."""
        cfg = config if config is not None else getattr(model, "cfg", None)
        if not isinstance(cfg, TwinConfig):
            raise ValueError(f"publish needs a TwinConfig (model.cfg or config=), got {type(cfg).__name__}")
        tensors = cpu_state_dict(model)
        staging = self.staging_dir / uuid.uuid4().hex
        staging.mkdir()
        try:
            # the big write happens outside the lock with a provisional id ...
            manifest = write_artifact(staging, tensors, version=self._next_version(), config=cfg,
                                      metrics=metrics, data_fingerprint=data_fingerprint,
                                      parent=parent, notes=notes)
            with self._lock():
                # ... and the id is fixed under it; renumbering only rewrites the manifest
                while True:
                    version = self._next_version()
                    if version != manifest.version:
                        manifest = manifest.model_copy(update={"version": version})
                        replace_atomic(staging / MANIFEST_FILE, manifest.to_json().encode())
                    try:
                        os.rename(staging, self.versions_dir / version)
                        break
                    except OSError as e:  # taken by a writer that ignored the lock: take the next id
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                fsync_dir(self.versions_dir)
                self._audit("publish", version, sha256=manifest.weights_sha256)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        log.info("published model version %s (%d params, %d bytes)", version, manifest.n_params,
                 manifest.weights_bytes)
        return version

    def _next_version(self) -> str:
        today = datetime.now(timezone.utc).date()
        prefix = f"{today:%Y%m%d}-"
        seqs = [parse_version(p.name)[1] for p in self._version_dirs() if p.name.startswith(prefix)]
        return make_version(today, max(seqs, default=0) + 1)

    # ---- read --------------------------------------------------------------------------------

    def scan(self) -> tuple[list[Manifest], list[tuple[str, str]]]:
        """(valid manifests sorted oldest first, [(dir name, reason)] for broken version dirs).
        Cheap: manifest + file sizes; `verify` does the full checksum."""
        good: list[Manifest] = []
        broken: list[tuple[str, str]] = []
        for d in self.versions_dir.iterdir():
            try:
                parse_version(d.name)
                good.append(self._quick_check(d))
            except (ArtifactError, ValueError) as e:
                broken.append((d.name, str(e)))
        good.sort(key=lambda m: version_sort_key(m.version))
        return good, sorted(broken)

    def list(self) -> list[Manifest]:
        """Valid versions, oldest first; broken dirs are skipped with a warning."""
        good, broken = self.scan()
        for name, reason in broken:
            log.warning("skipping broken model version dir %r: %s", name, reason)
        return good

    def get(self, version: str) -> Manifest:
        """The manifest (cheap check: valid JSON, weights present with the recorded size)."""
        return self._quick_check(self._dir(version))

    def load(self, version: str) -> tuple[nn.Module, Manifest]:
        """(model in eval mode on CPU, manifest); checksum, config and every tensor shape verified."""
        directory = self._dir(version)
        model, manifest = load_artifact(directory, self.build_model)
        if manifest.version != version:
            raise ArtifactError(f"{directory / MANIFEST_FILE}: manifest says version {manifest.version!r}")
        return model, manifest

    def verify(self, version: str) -> Manifest:
        """Full verification (the same as load); raises ArtifactError naming the problem."""
        return self.load(version)[1]

    def active(self) -> str | None:
        return self._read_state()["version"]

    def rollback_stack(self) -> list[str]:
        """Previously active versions, the next rollback target last."""
        return list(self._read_state()["previous"])

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        out = []
        for line in self.history_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash mid-append
                log.warning("skipping unreadable history line %r", line[:80])
        return out

    # ---- activate / rollback ---------------------------------------------------------------------

    def activate(self, version: str, verified: bool = False) -> Manifest:
        """Make `version` active after fully verifying it. A missing or corrupt version raises and the
        current active version stays. verified=True: the caller has just loaded it (`load` checks the
        same), so only the cheap check runs (a service that activates what it prepared)."""
        try:
            manifest = self.get(version) if verified else self.verify(version)
        except ArtifactError as e:
            log.warning("refusing to activate %s: %s", version, e)
            raise
        with self._lock():
            state = self._read_state()
            self.get(version)  # deleted while we verified?
            if state["version"] == version:
                return manifest
            previous = list(state["previous"])
            if state["version"] is not None:
                previous.append(state["version"])
            self._write_state(version, previous)
            self._audit("activate", version, previous=state["version"])
        log.info("activated model version %s (was %s)", version, state["version"])
        return manifest

    def rollback(self) -> str:
        """Re-activate the version that was active before the current one (repeatable: walks back the
        stack). Targets that were deleted or are now corrupt are skipped and dropped."""
        with self._lock():
            state = self._read_state()
            current, previous = state["version"], list(state["previous"])
            while previous:
                target = previous.pop()
                if target == current:
                    continue
                try:
                    self.verify(target)
                except ArtifactError as e:
                    log.warning("rollback skips %s: %s", target, e)
                    continue
                self._write_state(target, previous)
                self._audit("rollback", target, previous=current)
                log.info("rolled back from %s to %s", current, target)
                return target
        raise RegistryError(f"nothing to roll back to: no valid previously active version (active: {current})")

    # ---- delete / gc -------------------------------------------------------------------------

    def delete(self, version: str) -> None:
        """Remove a version (never the active one). Atomic: renamed out of versions/ first."""
        with self._lock():
            self._delete_locked(version)

    def gc(self, keep: int, dry_run: bool = False) -> list[str]:
        """Delete all but the `keep` newest valid versions, never the active one nor the next
        rollback target; also clear crashed publishes and deletions. Returns the deleted ids."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        with self._lock():
            state = self._read_state()
            protected = {state["version"], *(state["previous"][-1:])}
            # only valid versions count and go; broken dirs are left for an operator to inspect
            versions = [m.version for m in self.list()]
            doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]
            if dry_run:
                return doomed
            for v in doomed:
                self._delete_locked(v)
            now = time.time()
            for d in self.staging_dir.iterdir():
                if now - d.stat().st_mtime > self.stale_staging_s:
                    log.warning("removing stale staging dir %s (crashed publish)", d)
                    shutil.rmtree(d, ignore_errors=True)
            for d in self.trash_dir.iterdir():
                shutil.rmtree(d, ignore_errors=True)
        return doomed

    def _delete_locked(self, version: str) -> None:
        directory = self._dir(version)
        if self._read_state()["version"] == version:
            raise RegistryError(f"refusing to delete {version}: it is the active version")
        doomed = self.trash_dir / f"{version}.{uuid.uuid4().hex}"
        os.rename(directory, doomed)
        fsync_dir(self.versions_dir)
        shutil.rmtree(doomed, ignore_errors=True)
        self._audit("delete", version)
        log.info("deleted model version %s", version)

    # ---- internals ---------------------------------------------------------------------------

    def _dir(self, version: str) -> Path:
        """The version's dir; the id is validated first so it cannot escape `versions/`."""
        try:
            parse_version(version)
        except ValueError as e:
            raise VersionNotFoundError(str(e)) from None
        directory = self.versions_dir / version
        if not directory.is_dir():
            raise VersionNotFoundError(f"model version {version!r} not found in {self.versions_dir}")
        return directory

    @staticmethod
    def _quick_check(directory: Path) -> Manifest:
        manifest = quick_check(directory)
        if manifest.version != directory.name:
            raise ArtifactError(f"{directory / MANIFEST_FILE}: manifest says version {manifest.version!r}")
        return manifest

    def _version_dirs(self) -> list[Path]:
        out = []
        for p in self.versions_dir.iterdir():
            try:
                parse_version(p.name)
            except ValueError:
                continue
            out.append(p)
        return out

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.active_file.read_text())
        except FileNotFoundError:
            return {"version": None, "previous": []}
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{self.active_file}: unreadable active pointer: {e}") from e
        if (not isinstance(state, dict) or not isinstance(state.get("previous"), list)
                or not isinstance(state.get("version"), str | None)):
            raise RegistryError(f"{self.active_file}: malformed active pointer: {state!r}")
        return state

    def _write_state(self, version: str, previous: list[str]) -> None:
        state = {"version": version, "activated_at": _now_iso(), "previous": previous}
        replace_atomic(self.active_file, (json.dumps(state, indent=2) + "\n").encode())

    def _audit(self, action: str, version: str, **extra: Any) -> None:
        line = json.dumps({"at": _now_iso(), "action": action, "version": version, **extra}) + "\n"
        with open(self.history_file, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
