"""The operator CLI: readable output, non-zero exit with a clear message on every refusal."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.cli import main
from model_store.registry import ModelRegistry
from tests.test_model_store_common import flip_byte, make_model, weights_path


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, list[str]]:
    reg = ModelRegistry(tmp_path)
    vs = [reg.publish(make_model(i), metrics={"auc": 0.7 + i / 100, "gauc": 0.6}, data_fingerprint="fp")
          for i in range(3)]
    return tmp_path, vs


def run(root: Path, *args: str) -> int:
    return main(["--root", str(root), *args])


def test_list_shows_a_table_with_the_active_marker(store, capsys) -> None:
    root, vs = store
    assert run(root, "activate", vs[1]) == 0
    assert run(root, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "VERSION" in line)
    assert "AUC" in lines[header] and "GAUC" in lines[header]
    rows = lines[header + 1 : header + 4]
    assert [r.split()[0] if not r.startswith("*") else r.split()[1] for r in rows] == vs
    assert rows[1].startswith("*") and not rows[0].startswith("*")
    assert "0.7100" in rows[1]
    assert f"active: {vs[1]}" in lines[-1]


def test_show_prints_the_manifest(store, capsys) -> None:
    root, vs = store
    assert run(root, "show", vs[0]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == vs[0] and doc["active"] is False and doc["config"]["n_heads"] == 4


def test_verify_ok_and_corrupt(store, capsys) -> None:
    root, vs = store
    assert run(root, "verify", vs[0]) == 0
    assert capsys.readouterr().out.startswith(f"OK {vs[0]}")
    flip_byte(weights_path(root, vs[0]))
    assert run(root, "verify", vs[0]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_activate_refusals_exit_non_zero_and_keep_the_active_one(store, capsys) -> None:
    root, vs = store
    assert run(root, "activate", vs[0]) == 0
    flip_byte(weights_path(root, vs[2]))
    assert run(root, "activate", vs[2]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert run(root, "activate", "20991231-0001") == 1
    assert "not found" in capsys.readouterr().err
    assert ModelRegistry(root).active() == vs[0]


def test_rollback_and_gc(store, capsys) -> None:
    root, vs = store
    assert run(root, "rollback") == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    run(root, "activate", vs[0])
    run(root, "activate", vs[2])
    assert run(root, "rollback") == 0
    assert f"active: {vs[0]} (was {vs[2]})" in capsys.readouterr().out
    assert run(root, "gc", "--keep", "0") == 0  # active vs[0] stays; vs[1], vs[2] go
    assert f"deleted 2 version(s): {vs[1]}, {vs[2]}" in capsys.readouterr().out
    assert [m.version for m in ModelRegistry(root).list()] == [vs[0]]


def test_missing_root_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["--root", str(tmp_path / "nope"), "list"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_module_entry_point(store) -> None:
    root, vs = store
    res = subprocess.run([sys.executable, "-m", "model_store.cli", "--root", str(root), "show", "bogus"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "bad version id 'bogus'" in res.stderr
