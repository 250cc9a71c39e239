"""A manifest whose config is malformed (`"schema": "garbage"`) is a refused artifact everywhere: the
registry lists it as broken, loading raises ArtifactError, the CLI prints one line and exits 1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.artifact import MANIFEST_FILE
from model_store.errors import ArtifactError
from model_store.registry import ModelRegistry
from tests.test_model_store_common import make_model

MALFORMED = [{"schema": "garbage"}, {"schema": None}, {"schema": ["x"]}, {"schema": {"inherent": "garbage"}},
             {"schema": {"inherent": [{"nom": "item_id"}]}}, {"n_heads": "four"}, {"mlp_dims": 7}]


def break_config(reg: ModelRegistry, version: str, **changes: object) -> None:
    path = reg.versions_dir / version / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["config"].update(changes)
    path.write_text(json.dumps(doc))


@pytest.fixture()
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path)


@pytest.mark.parametrize("changes", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_a_malformed_config_is_an_artifact_error_and_listed_as_broken(reg: ModelRegistry, changes: dict) -> None:
    good = reg.publish(make_model(0), metrics={}, data_fingerprint="fp")
    bad = reg.publish(make_model(1), metrics={}, data_fingerprint="fp")
    break_config(reg, bad, **changes)
    with pytest.raises(ArtifactError, match="config"):
        reg.load(bad)
    manifests, broken = reg.scan()
    assert [m.version for m in manifests] == [good]
    assert [name for name, _ in broken] == [bad] and "config" in broken[0][1]
    with pytest.raises(ArtifactError):
        reg.activate(bad)
    assert reg.active() is None


@pytest.mark.parametrize("command", ["list", "activate", "verify", "show"])
def test_the_cli_prints_one_line_and_exits_1_without_a_traceback(reg: ModelRegistry, command: str) -> None:
    good = reg.publish(make_model(0), metrics={}, data_fingerprint="fp")
    reg.activate(good)
    bad = reg.publish(make_model(1), metrics={}, data_fingerprint="fp")
    break_config(reg, bad, schema="garbage")
    args = [command] if command == "list" else [command, bad]
    p = subprocess.run([sys.executable, "-m", "model_store.cli", "--root", str(reg.root), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p
    assert "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and "config" in err[0], p.stderr
    if command == "list":  # the valid versions are still listed
        assert good in p.stdout
    assert reg.active() == good
