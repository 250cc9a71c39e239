"""The registry: atomic publish, listing, activation that refuses broken versions, rollback, gc."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from model_store.artifact import MANIFEST_FILE, WEIGHTS_FILE
from model_store.errors import ArtifactError, RegistryError, VersionNotFoundError
from model_store.manifest import version_sort_key
from model_store.registry import ModelRegistry
from tests.test_model_store_common import flip_byte, make_model, weights_path


@pytest.fixture()
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store")


def _publish(reg: ModelRegistry, seed: int = 0, **kw: object) -> str:
    return reg.publish(make_model(seed), metrics={"auc": 0.7 + seed / 100}, data_fingerprint=f"fp{seed}", **kw)


def test_publish_then_load_returns_the_same_weights_in_eval_mode(reg: ModelRegistry) -> None:
    original = make_model(seed=5)
    v = reg.publish(original, metrics={"auc": 0.75}, data_fingerprint="fp", notes="first")
    model, manifest = reg.load(v)
    assert not model.training and manifest.version == v and manifest.notes == "first"
    for name, t in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    assert [m.version for m in reg.list()] == [v]
    assert reg.active() is None
    assert not any((reg.root / "staging").iterdir())  # staging cleaned up


def test_version_ids_are_unique_and_sorted_under_rapid_publishes(reg: ModelRegistry) -> None:
    sequential = [_publish(reg, seed=i) for i in range(5)]
    out: list[str] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(3):
                out.append(_publish(reg, seed=seed * 10 + i))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = sequential + out
    assert len(ids) == len(set(ids)) == 17
    listed = [m.version for m in reg.list()]
    assert listed == sorted(ids, key=version_sort_key)
    assert sequential == listed[:5]
    for m in reg.list():  # each manifest names its own dir and its weights verify
        assert reg.verify(m.version).version == m.version


def test_sequence_sorts_numerically_past_9999() -> None:
    assert sorted(["20261129-10000", "20261129-9999", "20261128-20000"], key=version_sort_key) == [
        "20261128-20000", "20261129-9999", "20261129-10000"]


def test_crashed_publish_leftovers_are_never_listed(reg: ModelRegistry) -> None:
    v1 = _publish(reg, 1)
    # a publish that died mid-write: half a staging dir
    crashed = reg.root / "staging" / "deadbeef"
    crashed.mkdir()
    (crashed / WEIGHTS_FILE).write_bytes(b"partial")
    # a version dir someone half-copied by hand: manifest without weights
    half = reg.root / "versions" / "20200101-0001"
    half.mkdir()
    shutil.copy(reg.root / "versions" / v1 / MANIFEST_FILE, half / MANIFEST_FILE)
    assert [m.version for m in reg.list()] == [v1]
    good, broken = reg.scan()
    assert [b[0] for b in broken] == ["20200101-0001"] and "missing file" in broken[0][1]
    # the next publish is unaffected and gc removes the stale staging dir
    v2 = _publish(reg, 2)
    assert [m.version for m in reg.list()] == [v1, v2]
    reg.stale_staging_s = 0
    reg.gc(keep=10)
    assert not crashed.exists()


def test_manifest_version_must_match_its_dir(reg: ModelRegistry) -> None:
    v1 = _publish(reg, 1)
    shutil.copytree(reg.root / "versions" / v1, reg.root / "versions" / "20200101-0007")
    assert [m.version for m in reg.list()] == [v1]
    with pytest.raises(ArtifactError, match="manifest says version"):
        reg.load("20200101-0007")


def test_activate_and_rollback_walk_back_the_history(reg: ModelRegistry) -> None:
    v1, v2, v3 = (_publish(reg, i) for i in range(3))
    for v in (v1, v2, v3):
        reg.activate(v)
    reg.activate(v3)  # re-activating the active version is a no-op, not a history entry
    assert reg.active() == v3 and reg.rollback_stack() == [v1, v2]
    assert reg.rollback() == v2 and reg.active() == v2
    assert reg.rollback() == v1 and reg.active() == v1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.active() == v1
    actions = [(h["action"], h["version"]) for h in reg.history()]
    assert actions[-5:] == [("activate", v1), ("activate", v2), ("activate", v3), ("rollback", v2), ("rollback", v1)]
    # the pointer file is plain JSON that other processes read
    assert json.loads((reg.root / "active.json").read_text())["version"] == v1
    assert ModelRegistry(reg.root).active() == v1


def test_activate_of_corrupt_version_keeps_the_active_one(reg: ModelRegistry) -> None:
    v1, v2 = _publish(reg, 1), _publish(reg, 2)
    reg.activate(v1)
    flip_byte(weights_path(reg.root, v2))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        reg.activate(v2)
    assert reg.active() == v1 and reg.rollback_stack() == []


def test_activate_of_missing_or_malformed_version_keeps_the_active_one(reg: ModelRegistry) -> None:
    v1 = _publish(reg, 1)
    reg.activate(v1)
    for bad in ("20991231-0001", "../versions", "latest"):
        with pytest.raises(VersionNotFoundError):
            reg.activate(bad)
    assert reg.active() == v1


def test_activate_of_version_with_mismatched_config_keeps_the_active_one(reg: ModelRegistry) -> None:
    v1, v2 = _publish(reg, 1), _publish(reg, 2)
    reg.activate(v1)
    path = reg.root / "versions" / v2 / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["config"]["d_v"] = 4
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="shape mismatch for tensor"):
        reg.activate(v2)
    assert reg.active() == v1


def test_rollback_skips_deleted_and_corrupt_targets(reg: ModelRegistry) -> None:
    v1, v2, v3, v4 = (_publish(reg, i) for i in range(4))
    for v in (v1, v2, v3, v4):
        reg.activate(v)
    reg.delete(v3)
    flip_byte(weights_path(reg.root, v2))
    assert reg.rollback() == v1
    assert reg.rollback_stack() == []


def test_delete_refuses_the_active_version(reg: ModelRegistry) -> None:
    v1 = _publish(reg, 1)
    reg.activate(v1)
    with pytest.raises(RegistryError, match="active version"):
        reg.delete(v1)
    assert reg.verify(v1).version == v1


def test_gc_keeps_newest_active_and_rollback_target(reg: ModelRegistry) -> None:
    vs = [_publish(reg, i) for i in range(6)]
    reg.activate(vs[0])
    reg.activate(vs[1])  # active = vs[1], rollback target = vs[0]
    assert reg.gc(keep=2, dry_run=True) == vs[2:4]
    assert [m.version for m in reg.list()] == vs  # dry run deleted nothing
    assert reg.gc(keep=2) == vs[2:4]
    assert [m.version for m in reg.list()] == [vs[0], vs[1], vs[4], vs[5]]
    assert reg.rollback() == vs[0]
    with pytest.raises(ValueError, match="keep must be >= 0"):
        reg.gc(keep=-1)


def test_publish_refuses_a_model_without_config(reg: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="publish needs a TwinConfig"):
        reg.publish(torch.nn.Linear(2, 2), metrics={}, data_fingerprint="x")
    assert reg.list() == [] and not any((reg.root / "staging").iterdir())


def test_publish_never_overwrites_an_existing_version(reg: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the id picked is taken anyway (a writer that bypassed the lock), rename fails and the
    publish takes the next id, rewriting only its manifest; the existing version is untouched."""
    v1 = _publish(reg, 1)
    sha1 = reg.get(v1).weights_sha256
    real = reg._next_version
    picks = iter([v1, v1])  # provisional id and first locked id both collide

    monkeypatch.setattr(reg, "_next_version", lambda: next(picks, None) or real())
    v2 = reg.publish(make_model(2), metrics={}, data_fingerprint="second")
    assert v2 != v1
    assert reg.get(v1).weights_sha256 == sha1 and reg.get(v1).data_fingerprint == "fp1"
    assert reg.verify(v2).data_fingerprint == "second"


def test_two_registry_objects_on_one_root_share_state(reg: ModelRegistry) -> None:
    other = ModelRegistry(reg.root)
    v1, v2 = _publish(reg, 1), _publish(other, 2)
    assert v1 != v2
    other.activate(v2)
    assert reg.active() == v2


def test_gc_leaves_broken_dirs_alone_and_does_not_count_them(reg: ModelRegistry) -> None:
    vs = [_publish(reg, i) for i in range(2)]
    broken = reg.root / "versions" / "20200101-0001"
    broken.mkdir()
    assert reg.gc(keep=1) == [vs[0]]
    assert broken.exists() and [m.version for m in reg.list()] == [vs[1]]
    reg.delete("20200101-0001")  # an operator removes it explicitly
    assert not broken.exists()
