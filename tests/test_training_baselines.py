"""The plain references: exact match counts, strictly-past item statistics, an oracle at the top."""
import numpy as np
import pytest

from training.baselines import count_features, five_features, match_counts, references
from training.dataset import load_dataset
from training.synthetic import generate, preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate(preset("tiny", n_users=80), out, progress=False)
    return load_dataset(out)


@pytest.mark.parametrize("window", [None, 100])
def test_match_counts_equal_a_brute_force_count(tiny, window):
    s = tiny.split("train")
    col = tiny.schema.inherent_names.index("category")
    got = match_counts(tiny, s, col, window)
    for i in range(0, len(s), 37):
        lo, h = tiny.offsets[s.user_row[i]], s.hist_len[i]
        rows = tiny.beh_item_row[lo:lo + h] if window is None else tiny.beh_item_row[lo + max(h - window, 0):lo + h]
        want = (tiny.item_raw[rows, col] == tiny.item_raw[s.item_row[i], col]).sum()
        assert got[i] == want, i


def test_references_on_synthetic_data_order_as_they_should(tiny):
    refs = {r.name: r.test for r in references(tiny)}
    oracle = refs["oracle (noiseless logit, ceiling)"]["auc"]
    assert all(oracle > t["auc"] for n, t in refs.items() if not n.startswith("oracle"))
    assert refs["LR match counts (full history)"]["auc"] > 0.7
    assert count_features(tiny, tiny.split("test"), None).shape[1] == 2 + 2 * 3  # item, author, category


def test_five_features_read_only_strictly_earlier_ratings(tmp_path):
    from tests.test_training_movielens import write_toy_movielens
    from training.movielens import convert

    convert(write_toy_movielens(tmp_path / "ml"), tmp_path / "out")
    d = load_dataset(tmp_path / "out")
    for split in ("train", "val", "test"):
        s = d.split(split)
        f = five_features(d, s)
        j = d.schema.stored_cross_names().index("rating")
        for i in range(len(s)):
            past = (d.beh_item_row == s.item_row[i]) & (d.beh_ts < s.ts[i])
            assert f[i, 4] == pytest.approx(np.log1p(past.sum()))
            if past.any():
                assert f[i, 3] == pytest.approx(d.beh_cross[past, j].mean())
            lo, h = d.offsets[s.user_row[i]], s.hist_len[i]
            if h:
                assert f[i, 0] == pytest.approx(d.beh_cross[lo:lo + h, j].mean())
