"""The synthetic lifelong generator: determinism, on-disk structure and the latent signal it plants."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.synthetic_checks import check_reproducible, check_user_splits
from training import synthetic
from training.synthetic import (
    GroupSampler, PRESETS, affinity, generate, make_behaviors, make_catalog, make_users, preset,
)
from twin.config import FeatureSchema


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate(preset("tiny"), out, progress=False)
    return out


def _table(path):
    return {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}


def test_same_seed_same_data_other_seed_other_data(tiny, tmp_path):
    check_reproducible(synthetic, tiny, tmp_path)


def test_structure_follows_the_contract(tiny):
    cfg = PRESETS["tiny"]
    raw = json.loads((tiny / "schema.json").read_text())
    schema = FeatureSchema.from_dict(raw)
    assert raw["meta"]["source"] == "synthetic"
    items, beh, smp = (_table(tiny / f"{n}.parquet") for n in ("items", "behaviors", "samples"))
    assert items["item_id"].tolist() == list(range(1, cfg.n_items + 1))
    assert list(items) == schema.inherent_names
    vocab = {f.name: f.vocab for f in schema.inherent}
    assert items["author_id"].max() < vocab["author_id"] and items["category"].max() < vocab["category"]
    assert list(beh) == ["user_id", "item_id", "ts", *schema.stored_cross_names()]
    # sorted by (user_id, ts)
    key = beh["user_id"].astype(np.float64) * 1e13 + beh["ts"]
    assert (np.diff(beh["user_id"]) >= 0).all() and (np.diff(key) >= 0).all()
    assert ((beh["play_ratio"] > 0) & (beh["play_ratio"] < 1)).all() and set(np.unique(beh["liked"])) <= {0.0, 1.0}
    # each sample sees its user's whole history, and comes after it
    users, first, counts = np.unique(beh["user_id"], return_index=True, return_counts=True)
    row = np.searchsorted(users, smp["user_id"])
    assert (smp["hist_len"] == counts[row]).all()
    assert (smp["ts"] > beh["ts"][first + counts - 1][row]).all()
    assert counts.min() >= cfg.hist_min and counts.max() <= cfg.hist_cap
    assert 0.35 < smp["label"].mean() < 0.65


def test_splits_are_disjoint_by_user_and_80_10_10(tiny):
    check_user_splits(_table(tiny / "samples.parquet"), PRESETS["tiny"].n_users)


def test_labels_carry_dormant_interests_that_recent_behaviors_miss(tiny):
    items, beh, smp = (_table(tiny / f"{n}.parquet") for n in ("items", "behaviors", "samples"))
    kind = smp["target_kind"]
    dormant, uniform = smp["label"][kind == 1].mean(), smp["label"][kind == 3].mean()
    assert dormant > uniform + 0.3, (dormant, uniform)
    # the dormant target's category is all over the full history but rare among the last 100
    cat = items["category"]
    users, first, counts = np.unique(beh["user_id"], return_index=True, return_counts=True)
    recent, full = [], []
    for j in np.flatnonzero(kind == 1):
        u = np.searchsorted(users, smp["user_id"][j])
        if counts[u] < 200:
            continue
        seq = cat[beh["item_id"][first[u]:first[u] + counts[u]] - 1]
        c = cat[smp["item_id"][j] - 1]
        recent.append((seq[-100:] == c).mean())
        full.append((seq[:-100] == c).mean())
    assert len(full) > 20 and np.mean(full) > 3 * np.mean(recent), (len(full), np.mean(full), np.mean(recent))


def test_completion_and_likes_follow_latent_affinity():
    cfg = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    cat = make_catalog(cfg, rng)
    users = make_users(cfg, cat, np.arange(1, 201), rng)
    beh = make_behaviors(cfg, cat, users, rng)
    row = np.repeat(np.arange(200), users.hist_len)
    a = affinity(users, cat, row, beh["item_id"] - 1)
    liked_in, liked_out = beh["liked"][a > 0].mean(), beh["liked"][a == 0].mean()
    assert beh["play_ratio"][a > 0].mean() > beh["play_ratio"][a == 0].mean() + 0.1
    assert liked_in > 2 * liked_out


def test_group_sampler_draws_within_group_by_weight():
    groups = np.array([0, 1, 1, 1, 2])
    weights = np.array([1.0, 1.0, 2.0, 7.0, 5.0])
    s = GroupSampler(groups, weights, 3)
    rng = np.random.default_rng(0)
    got = s.sample(np.ones(20_000, dtype=np.int64), rng.random(20_000))
    assert set(np.unique(got)) == {1, 2, 3}
    freq = np.bincount(got, minlength=5)[1:4] / 20_000
    assert freq == pytest.approx([0.1, 0.2, 0.7], abs=0.02)
    assert (s.sample(np.zeros(5, dtype=np.int64), np.full(5, 0.999999)) == 0).all()
    with pytest.raises(ValueError, match="empty groups"):
        GroupSampler(groups, weights, 4).sample(np.array([3]), np.array([0.5]))


def test_bench_preset_matches_the_design_workload():
    cfg = PRESETS["bench"]
    assert (cfg.n_items, cfg.n_users, cfg.zipf_a) == (1_000_000, 10_000, 1.1)
    small = preset("bench", n_items=5_000, n_authors=500)
    rng = np.random.default_rng(0)
    lens = make_users(small, make_catalog(small, rng), np.arange(1, 10_001), rng).hist_len
    assert 2_000 < np.median(lens) < 5_000 and lens.max() > 40_000 and lens.max() <= 100_000
