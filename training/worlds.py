"""Load-test worlds: N users whose histories hold exactly L behaviors, drawn by a synthetic data
set's own generator (its family, config and seed, read from the data set's schema.json) on the very
catalog that data set holds, so they look like its users' histories, only longer.

Written as a behaviors file of the data set's format (docs/contracts.md: user_id, item_id, ts and
the cross columns, oldest first per user), which the service loads like the demo behaviors. The
service runs this through `python -m training.cli world` in a child process: serving never imports
the generators. ~2 us per behavior; the generator's [n, K] temporaries are bounded by
`chunk_behaviors` (~0.2 GB at 200k).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training import synthetic, synthetic_topics

FAMILIES = {"categories": (synthetic, synthetic.CATEGORIES), "topics": (synthetic_topics, synthetic_topics.TOPICS)}
CHUNK_BEHAVIORS = 200_000


def data_config(data_dir: str | Path) -> tuple[synthetic.SyntheticConfig, synthetic.Family]:
    """The generator config and family recorded in data_dir/schema.json, checked against
    items.parquet (a world must be drawn from the very catalog that the data set holds)."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "schema.json").read_text()).get("meta", {})
    if meta.get("source") != "synthetic":
        raise ValueError(f"{data_dir}: load-test worlds need a synthetic data set, got source {meta.get('source')!r}")
    family_name = meta.get("family", "categories")  # data sets written before the topics family
    if family_name not in FAMILIES:
        raise ValueError(f"{data_dir}: unknown generator family {family_name!r}; expected one of {sorted(FAMILIES)}")
    module, family = FAMILIES[family_name]
    config_cls = module.TopicsConfig if family_name == "topics" else synthetic.SyntheticConfig
    cfg = config_cls(**dict(meta["config"], target_mix=tuple(meta["config"]["target_mix"])))
    cat = family.make_catalog(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
    items = pq.read_table(data_dir / "items.parquet", columns=["author_id"])
    if not np.array_equal(items.column("author_id").to_numpy(), cat.author):
        raise ValueError(f"{data_dir}/items.parquet does not match the catalog its schema.json config generates")
    return cfg, family


def world_behaviors(cfg: synthetic.SyntheticConfig, family: synthetic.Family, seq_len: int, n_users: int,
                    first_user_id: int, chunk_behaviors: int = CHUNK_BEHAVIORS) -> Iterator[dict[str, np.ndarray]]:
    """Behavior columns (the data set's behaviors format) of users first_user_id .. + n_users - 1,
    each with exactly seq_len behaviors, a chunk of users at a time. Deterministic in its arguments."""
    cfg = replace(cfg, hist_median=seq_len, hist_sigma=0.0, hist_min=seq_len, hist_cap=seq_len)
    cat = family.make_catalog(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
    per_chunk = max(1, chunk_behaviors // seq_len)
    for ci, lo in enumerate(range(0, n_users, per_chunk)):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, first_user_id, ci]))
        ids = np.arange(lo, min(lo + per_chunk, n_users), dtype=np.int64) + first_user_id
        yield synthetic.make_behaviors(cfg, cat, family.make_users(cfg, cat, ids, rng), rng, family)


def write_world(data_dir: str | Path, out: str | Path, seq_len: int, n_users: int, first_user_id: int,
                chunk_behaviors: int = CHUNK_BEHAVIORS) -> int:
    """Write the world's behaviors file to `out` (atomically: a reader never sees half of it);
    returns the number of behaviors written."""
    if seq_len < 1 or n_users < 1 or first_user_id < 1:
        raise ValueError(f"need seq_len, n_users and first_user_id >= 1, got {seq_len}, {n_users}, {first_user_id}")
    cfg, family = data_config(data_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    written = 0
    schema = synthetic._beh_schema()
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for beh in world_behaviors(cfg, family, seq_len, n_users, first_user_id, chunk_behaviors):
                w.write_table(pa.table(beh, schema=schema))
                written += len(beh["ts"])
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return written
