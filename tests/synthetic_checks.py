"""Checks every synthetic generator family must pass (training/synthetic.py, synthetic_topics.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

FILES = ("items.parquet", "behaviors.parquet", "samples.parquet")


def table(path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}


def check_reproducible(family, written: Path, tmp_path: Path) -> None:
    """`written` holds family.preset("tiny") at seed 0: the same seed writes it again bit for bit,
    another seed writes other data."""
    family.generate(family.preset("tiny"), tmp_path / "again", progress=False)
    family.generate(family.preset("tiny", seed=1), tmp_path / "other", progress=False)
    for name in FILES:
        assert pq.read_table(written / name).equals(pq.read_table(tmp_path / "again" / name)), name
        assert not pq.read_table(written / name).equals(pq.read_table(tmp_path / "other" / name)), name


def check_user_splits(samples: dict[str, np.ndarray], n_users: int) -> None:
    """Users split 80/10/10, none in two splits."""
    by_split = {s: set(samples["user_id"][samples["split"] == s].tolist()) for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    n = n_users
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [int(0.8 * n), int(0.1 * n), n - int(0.9 * n)]
