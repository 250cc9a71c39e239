"""The artifact format: bit-exact round trip, and every kind of corruption refused with a clear error."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from model_store.artifact import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    cpu_state_dict,
    load_artifact,
    read_manifest,
    write_artifact,
)
from model_store.errors import ArtifactError
from model_store.manifest import Manifest
from tests.test_model_store_common import flip_byte, make_model, small_config
from twin.config import TwinConfig


@pytest.fixture()
def art(tmp_path: Path) -> tuple[Path, nn.Module]:
    model = make_model(seed=1)
    write_artifact(tmp_path, cpu_state_dict(model), version="20261129-0001", config=model.cfg,
                   metrics={"auc": 0.71, "gauc": 0.66, "per_split": {"val": {"n": 10}}},
                   data_fingerprint="sha256:abc")
    return tmp_path, model


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_round_trip_is_bit_exact(art: tuple[Path, nn.Module]) -> None:
    directory, original = art
    model, manifest = load_artifact(directory)
    assert not model.training
    assert model.cfg == original.cfg and manifest.twin_config() == original.cfg
    want, got = original.state_dict(), model.state_dict()
    assert list(want) == list(got)
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert torch.equal(got[name], want[name]), name
    items = torch.tensor([[5, 3, 2, 31, 40], [299, 39, 11, 700, 0]])  # [N, F_h] raw inherent values
    with torch.inference_mode():
        assert torch.equal(model.project_items(items), original.eval().project_items(items))
    assert manifest.metrics["per_split"] == {"val": {"n": 10}}
    assert manifest.n_params == sum(p.numel() for p in original.state_dict().values())


def test_manifest_json_round_trip(art: tuple[Path, nn.Module]) -> None:
    directory, _ = art
    m = read_manifest(directory)
    assert Manifest.from_json(m.to_json()) == m
    assert json.loads((directory / MANIFEST_FILE).read_text())["created_at"].endswith("Z")


def test_weights_file_is_safetensors_not_pickle(art: tuple[Path, nn.Module]) -> None:
    data = (art[0] / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert "w_item.weight" in header and header["__metadata__"] == {"format": "pt"}
    assert b"\x80\x04" not in data[:2]  # no pickle protocol marker


def test_flipped_byte_is_refused_with_checksum_error(art: tuple[Path, nn.Module]) -> None:
    flip_byte(art[0] / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(art[0])


def test_edited_sha_is_refused(art: tuple[Path, nn.Module]) -> None:
    _edit_manifest(art[0], weights_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(art[0])


def test_config_changed_so_shapes_differ_is_refused(art: tuple[Path, nn.Module]) -> None:
    directory, model = art
    _edit_manifest(directory, config=small_config(d_k=4).to_dict())  # sha still matches the weights
    h = model.cfg.schema.inherent_dim  # w_item: [A (d_k + d_v), H], d_k 8 -> 4
    with pytest.raises(ArtifactError, match=rf"shape mismatch for tensor 'w_item.weight': artifact \[64, {h}\], model \[48, {h}\]"):
        load_artifact(directory)


def test_config_with_different_vocab_is_refused(art: tuple[Path, nn.Module]) -> None:
    cfg = small_config()
    schema = cfg.schema.to_dict()
    schema["inherent"][0]["vocab"] = 301
    _edit_manifest(art[0], config={**cfg.to_dict(), "schema": schema})
    with pytest.raises(ArtifactError, match=r"inherent_emb.tables.0.weight.*\[300, 16\].*\[301, 16\]"):
        load_artifact(art[0])


@pytest.mark.parametrize("name", [WEIGHTS_FILE, MANIFEST_FILE])
def test_missing_file_is_refused(art: tuple[Path, nn.Module], name: str) -> None:
    (art[0] / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name}: missing file"):
        load_artifact(art[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format_version": 2}', "unsupported format_version 2"),
    ],
)
def test_bad_manifest_json_is_refused(art: tuple[Path, nn.Module], text: str, message: str) -> None:
    (art[0] / MANIFEST_FILE).write_text(text)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(art[0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"weights_sha256": "xyz"}, "weights_sha256.*64 lowercase hex"),
        ({"version": "../../etc"}, "bad version id"),
        ({"created_at": "2026-11-29T10:00:00"}, "created_at must carry a timezone"),
        ({"config": {"schema": {"inherent": [], "cross": []}}}, "config does not rebuild a TwinConfig"),
    ],
)
def test_invalid_manifest_fields_are_named(art: tuple[Path, nn.Module], changes: dict, message: str) -> None:
    _edit_manifest(art[0], **changes)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(art[0])


class _Boom:
    """Unpickling this would create a file: proves loading never unpickles."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_pickle_payload_with_matching_sha_is_refused_and_not_executed(art: tuple[Path, nn.Module], tmp_path_factory) -> None:
    import hashlib

    directory, _ = art
    canary = tmp_path_factory.mktemp("canary") / "pwned"
    payload = pickle.dumps({"w_item.weight": _Boom(str(canary))})
    (directory / WEIGHTS_FILE).write_bytes(payload)
    _edit_manifest(directory, weights_sha256=hashlib.sha256(payload).hexdigest(), weights_bytes=len(payload))
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_artifact(directory)
    assert not canary.exists()


def test_nan_weights_are_refused_at_write(tmp_path: Path) -> None:
    model = make_model()
    with torch.no_grad():
        model.w_c[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'w_c' holds NaN/inf"):
        write_artifact(tmp_path, cpu_state_dict(model), version="20261129-0001", config=model.cfg,
                       metrics={}, data_fingerprint="x")


def test_tied_weights_are_saved_and_reloaded(tmp_path: Path) -> None:
    """safetensors refuses shared storage; cpu_state_dict unshares it and loading re-ties by copy."""

    class Tied(nn.Module):
        def __init__(self, cfg: TwinConfig) -> None:
            super().__init__()
            self.a = nn.Embedding(cfg.schema.inherent[0].vocab, 4)
            self.b = nn.Linear(4, cfg.schema.inherent[0].vocab, bias=False)
            self.b.weight = self.a.weight  # tied

    cfg = small_config()
    torch.manual_seed(3)
    model = Tied(cfg)
    write_artifact(tmp_path, cpu_state_dict(model), version="20261129-0001", config=cfg, metrics={},
                   data_fingerprint="x")
    loaded, _ = load_artifact(tmp_path, build_model=Tied)
    assert torch.equal(loaded.a.weight, model.a.weight)
    assert loaded.a.weight is loaded.b.weight


def test_non_finite_metric_is_refused(tmp_path: Path) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="metrics.auc is not finite"):
        write_artifact(tmp_path, cpu_state_dict(model), version="20261129-0001", config=model.cfg,
                       metrics={"auc": float("nan")}, data_fingerprint="x")
