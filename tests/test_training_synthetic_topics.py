"""The `topics` generator family: determinism, the shared on-disk format, and the finer latent
structure it plants (topics inside and across categories, dormant interests, the oracle logit)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.synthetic_checks import check_reproducible, check_user_splits, table as _table
from training import synthetic, synthetic_topics
from training.dataset import load_dataset
from training.metrics import auc
from training.schemas import synthetic_schema
from training.synthetic import make_behaviors
from training.synthetic_topics import (
    PRESETS, TOPICS, affinity, generate, make_catalog, make_users, preset,
)
from twin.config import FeatureSchema


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("topics_tiny")
    generate(preset("tiny"), out, progress=False)
    return out


def _catalog(cfg):
    """The catalog `generate` built (it draws it first, from SeedSequence([seed, 0]))."""
    return make_catalog(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))


def _chunk0_users(cfg, cat):
    """The latent state of chunk 0's users: `generate` draws it first from the chunk's generator."""
    ids = np.arange(1, cfg.users_per_chunk + 1)
    return make_users(cfg, cat, ids, np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, 0])))


def _history_count(beh, smp, values_of_item):
    """For every sample: how many of its user's behaviors share the target's value (e.g. category)."""
    users, first, counts = np.unique(beh["user_id"], return_index=True, return_counts=True)
    u = np.searchsorted(users, smp["user_id"])
    seq = values_of_item[beh["item_id"] - 1]
    target = values_of_item[smp["item_id"] - 1]
    return np.array([(seq[first[r]:first[r] + counts[r]] == t).sum() for r, t in zip(u, target)])


def test_same_seed_same_data_other_seed_other_data(tiny, tmp_path):
    check_reproducible(synthetic_topics, tiny, tmp_path)


def test_same_schema_and_format_as_the_categories_family_and_the_loader_reads_it(tiny):
    cfg = PRESETS["tiny"]
    raw = json.loads((tiny / "schema.json").read_text())
    assert raw["meta"]["source"] == "synthetic" and raw["meta"]["family"] == "topics"
    schema = FeatureSchema.from_dict(raw)
    assert schema == synthetic_schema(cfg.n_items + 1, cfg.n_authors + 1, cfg.n_categories + 1)
    items, beh = _table(tiny / "items.parquet"), _table(tiny / "behaviors.parquet")
    assert list(items) == schema.inherent_names  # the latent topic and vector are not written
    assert items["item_id"].tolist() == list(range(1, cfg.n_items + 1))
    assert list(beh) == ["user_id", "item_id", "ts", *schema.stored_cross_names()]
    assert pq.read_schema(tiny / "samples.parquet").equals(synthetic._sample_schema())

    data = load_dataset(tiny)
    assert len(data.user_ids) == cfg.n_users and len(data.beh_ts) == raw["meta"]["n_behaviors"]
    assert sum(len(s) for s in data.splits.values()) == cfg.n_users * cfg.samples_per_user
    test = data.split("test")
    assert set(test.extra) == {"target_kind", "oracle_logit"}
    # each sample sees its user's whole history
    assert (test.hist_len == np.diff(data.offsets)[test.user_row]).all()
    batch, _ = data.make_batch(test, data.requests("test", 64), np.arange(2), max_len=50)
    assert batch.seq_items.shape == (2, 50, len(schema.inherent_names))
    assert batch.target.shape == (2, cfg.samples_per_user, len(schema.inherent_names))  # one request per user


def test_splits_are_disjoint_by_user_and_80_10_10(tiny):
    check_user_splits(_table(tiny / "samples.parquet"), PRESETS["tiny"].n_users)


def test_one_request_time_per_user_after_its_whole_history(tiny):
    beh, smp = _table(tiny / "behaviors.parquet"), _table(tiny / "samples.parquet")
    users, first, counts = np.unique(smp["user_id"], return_index=True, return_counts=True)
    assert (counts == PRESETS["tiny"].samples_per_user).all()
    times = {u: np.unique(smp["ts"][smp["user_id"] == u]) for u in users}
    assert all(len(t) == 1 for t in times.values())
    b_users, b_first, b_counts = np.unique(beh["user_id"], return_index=True, return_counts=True)
    last = dict(zip(b_users.tolist(), beh["ts"][b_first + b_counts - 1].tolist()))
    assert all(times[u][0] > last[u] for u in users.tolist())
    # U(1 min, 1 day) after the history's end (latent: chunk 0's users, drawn as `generate` does)
    cfg = PRESETS["tiny"]
    chunk0 = _chunk0_users(cfg, _catalog(cfg))
    gap = np.array([times[u][0] for u in chunk0.ids.tolist()]) - chunk0.t_end
    assert (gap >= 60_000).all() and (gap < 86_400_000).all() and len(np.unique(gap)) == len(gap)


def test_label_rate_is_roughly_balanced_and_the_oracle_ranks_labels(tiny):
    smp = _table(tiny / "samples.parquet")
    assert 0.35 < smp["label"].mean() < 0.6
    assert set(np.unique(smp["target_kind"])) == {0, 1, 2, 3}
    assert auc(smp["label"].astype(np.float64), smp["oracle_logit"].astype(np.float64)) > 0.8


def test_oracle_logit_is_the_noiseless_click_logit_of_the_latent_state(tiny):
    cfg = PRESETS["tiny"]
    cat = _catalog(cfg)
    users = _chunk0_users(cfg, cat)
    smp = _table(tiny / "samples.parquet")
    pick = np.flatnonzero(smp["user_id"] <= cfg.users_per_chunk)[::37]
    row, item = smp["user_id"][pick] - 1, smp["item_id"][pick] - 1
    want = -2.3 + 1.5 * affinity(users, cat, row, item) + 0.25 * cat.z_pop[item] + users.bias[row]
    assert len(pick) > 20
    np.testing.assert_allclose(smp["oracle_logit"][pick], want, rtol=1e-6, atol=1e-5)
    # and the histories written are the ones of that latent state
    b_users, b_counts = np.unique(_table(tiny / "behaviors.parquet")["user_id"], return_counts=True)
    assert (b_counts[:cfg.users_per_chunk] == users.hist_len).all()
    assert (smp["hist_len"][pick] == users.hist_len[row]).all()


def test_a_category_covers_several_topics_and_a_topic_spans_several_categories():
    cfg = PRESETS["ci"]
    cat = _catalog(cfg)
    n = np.zeros((cfg.n_categories + 1, cfg.n_topics))
    np.add.at(n, (cat.category, cat.topic), 1.0)
    n = n[1:][:, n[1:].sum(axis=0) > 0]  # [C, non-empty topics] item counts
    topics_per_category = (n / n.sum(axis=1, keepdims=True) >= 0.05).sum(axis=1)
    categories_per_topic = (n / n.sum(axis=0, keepdims=True) >= 0.10).sum(axis=0)
    assert np.median(topics_per_category) >= 4 and topics_per_category.min() >= 2
    assert np.median(categories_per_topic) >= 2
    # items of a topic are close in the latent space, items of one category less so
    dots = cat.vec @ cat.vec[:500].T  # [N, 500]
    same_topic = cat.topic[:, None] == cat.topic[None, :500]
    same_cat = (cat.category[:, None] == cat.category[None, :500]) & ~same_topic
    assert dots[same_topic].mean() > 0.85 > 0.5 > dots[same_cat].mean() > dots[~same_topic & ~same_cat].mean() + 0.1


def test_counting_the_target_category_is_a_weaker_signal_than_in_the_categories_family(tiny, tmp_path):
    synthetic.generate(synthetic.preset("tiny"), tmp_path / "categories", progress=False)
    lift = {}
    for name, d in (("topics", tiny), ("categories", tmp_path / "categories")):
        items, beh, smp = (_table(d / f"{n}.parquet") for n in ("items", "behaviors", "samples"))
        y = smp["label"].astype(np.float64)
        count = _history_count(beh, smp, items["category"]).astype(np.float64)
        # share of the ceiling's lift over chance that counting reaches
        lift[name] = (auc(y, count) - 0.5) / (auc(y, smp["oracle_logit"].astype(np.float64)) - 0.5)
    assert lift["topics"] < 0.7 * lift["categories"], lift


def test_dormant_interest_targets_are_missing_from_the_newest_behaviors(tiny):
    cat = _catalog(PRESETS["tiny"])
    beh, smp = _table(tiny / "behaviors.parquet"), _table(tiny / "samples.parquet")
    kind = smp["target_kind"]
    assert (kind == 1).sum() > 100
    assert smp["label"][kind == 1].mean() > smp["label"][kind == 3].mean() + 0.2
    # the dormant target's topic is present in the older history but rare among the newest 100
    users, first, counts = np.unique(beh["user_id"], return_index=True, return_counts=True)
    recent, older = [], []
    for j in np.flatnonzero(kind == 1):
        u = np.searchsorted(users, smp["user_id"][j])
        if counts[u] < 200:
            continue
        seq = cat.topic[beh["item_id"][first[u]:first[u] + counts[u]] - 1]
        t = cat.topic[smp["item_id"][j] - 1]
        recent.append((seq[-100:] == t).mean())
        older.append((seq[:-100] == t).mean())
    assert len(older) > 50 and np.mean(older) > 3 * np.mean(recent), (len(older), np.mean(older), np.mean(recent))


def test_an_interest_is_consumed_in_its_topic_and_the_nearest_ones():
    cfg = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    cat = make_catalog(cfg, rng)
    users = make_users(cfg, cat, np.arange(1, 201), rng)
    row, k = np.repeat(np.arange(200), 50), np.zeros(200 * 50, dtype=np.int64)
    got = TOPICS.interest_item(users, cat, row, k, rng)
    own = cat.topic[got] == users.topic[row, 0]
    assert 0.9 < own.mean() < 1.0  # its own topic, now and then a neighbour
    # a neighbour is chosen by appeal: nearer the interest's centre than the other topics' centres
    dots = users.centre[row, 0] @ cat.topic_centre.T  # [n, T]
    near = np.argsort(-dots, axis=1)[:, 1:6]  # the 5 topics nearest the interest after its own
    assert np.mean([t in n for t, n in zip(cat.topic[got[~own]], near[~own])]) > 0.5


def test_completion_and_likes_follow_latent_affinity():
    cfg = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    cat = make_catalog(cfg, rng)
    users = make_users(cfg, cat, np.arange(1, 201), rng)
    beh = make_behaviors(cfg, cat, users, rng, TOPICS)
    a = affinity(users, cat, np.repeat(np.arange(200), users.hist_len), beh["item_id"] - 1)
    high, low = a > np.quantile(a, 0.75), a < np.quantile(a, 0.25)
    assert beh["play_ratio"][high].mean() > beh["play_ratio"][low].mean() + 0.1
    assert beh["liked"][high].mean() > 2 * beh["liked"][low].mean()


def test_lifelong_preset_reaches_twin_scale_histories():
    cfg = PRESETS["lifelong"]
    assert (cfg.n_users, cfg.samples_per_user, cfg.hist_cap) == (2_000, 256, 20_000)
    small = preset("lifelong", n_items=3_000, n_authors=500, n_categories=20)
    rng = np.random.default_rng(0)
    lens = make_users(small, make_catalog(small, rng), np.arange(1, 2_001), rng).hist_len
    assert 2_500 < np.median(lens) < 3_500 and (lens > 10_000).sum() > 50 and lens.max() <= 20_000


def test_config_refuses_too_few_authors_for_the_topics():
    with pytest.raises(ValueError, match="n_authors >= n_topics"):
        preset("tiny", n_authors=50)


def test_cli_generates_either_family(tmp_path, capsys):
    from training.cli import main

    assert main(["generate", "--family", "topics", "--preset", "tiny", "--users", "40",
                 "--out", str(tmp_path / "t")]) == 0
    meta = json.loads((tmp_path / "t" / "schema.json").read_text())["meta"]
    assert meta["family"] == "topics" and meta["config"]["n_users"] == 40 and meta["config"]["topics_per_category"] == 4
    assert main(["generate", "--preset", "tiny", "--users", "40", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "schema.json").read_text())["meta"]["family"] == "categories"
    with pytest.raises(SystemExit):
        main(["generate", "--family", "topics", "--preset", "bench", "--out", str(tmp_path / "x")])
    assert "has no preset 'bench'" in capsys.readouterr().err
