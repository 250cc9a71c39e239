"""MovieLens loader: id mapping, features, labels, and no history past the request time."""
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from training.dataset import load_dataset
from training.movielens import DEFAULT_DIR, convert


def _table(path):
    return {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}


def write_toy_movielens(src: Path, tags: bool = True) -> Path:
    """Two users; user 1 rates 10 movies, two of them in the same second (t = 900)."""
    src.mkdir(parents=True)
    (src / "movies.csv").write_text(
        "movieId,title,genres\n"
        '5,"Bird, The (1999)",Drama|Comedy\n'
        "2,Jumanji (1995),Adventure|Children\n"
        "40,Untitled,(no genres listed)\n"
        + "".join(f"{m},Movie {m} (2001),Comedy\n" for m in range(100, 110)))
    rows = [(1, 100 + i, 4.0 if i % 2 else 2.5, 100 * (i + 1)) for i in range(8)]  # t = 100..800
    rows += [(1, 5, 5.0, 900), (1, 2, 3.0, 900)]
    rows += [(2, 100 + i, 3.5 + (i % 3) * 0.5, 50 * (i + 1)) for i in range(10)]
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in rows))
    # user 1 tags movie 100 right after rating it (t=100), movie 101 two days later (t=200)
    (src / "tags.csv").write_text("userId,movieId,tag,timestamp\n" +
                                  ("1,100,fun,130\n1,101,late,172999\n" if tags else ""))
    return src


@pytest.fixture()
def toy_ml(tmp_path):
    return write_toy_movielens(tmp_path / "ml")


def test_a_data_set_without_tags_converts_with_nothing_tagged(tmp_path):
    convert(write_toy_movielens(tmp_path / "ml", tags=False), tmp_path / "out")
    beh = _table(tmp_path / "out" / "behaviors.parquet")
    assert len(beh["tagged"]) == 20 and beh["tagged"].sum() == 0
    load_dataset(tmp_path / "out")


def test_item_statistics_leave_out_every_target_rating(toy_ml, tmp_path):
    convert(toy_ml, tmp_path / "out")
    items, smp = _table(tmp_path / "out" / "items.parquet"), _table(tmp_path / "out" / "samples.parquet")
    beh = _table(tmp_path / "out" / "behaviors.parquet")
    target = set(zip(smp["user_id"].tolist(), smp["item_id"].tolist(), smp["ts"].tolist()))
    for i, item in enumerate(items["item_id"]):
        rows = [r for u, it, t, r in zip(beh["user_id"], beh["item_id"], beh["ts"], beh["rating"])
                if it == item and (u, it, t) not in target]
        assert items["n_ratings"][i] == len(rows)
        assert items["mean_rating"][i] == (round(10 * np.mean(rows)) if rows else 0)


def test_movies_get_dense_ids_primary_genre_and_year(toy_ml, tmp_path):
    convert(toy_ml, tmp_path / "out")
    items = _table(tmp_path / "out" / "items.parquet")
    assert items["item_id"].tolist() == list(range(1, 14))  # movieIds 2, 5, 40, 100..109 in order
    genres = ["(no genres listed)", "Adventure", "Children", "Comedy", "Drama"]  # sorted names, id = index + 1
    assert items["genre"][:3].tolist() == [genres.index("Adventure") + 1, genres.index("Drama") + 1, 1]
    assert items["year"][:4].tolist() == [1995, 1999, 0, 2001]


def test_targets_see_only_strictly_earlier_ratings(toy_ml, tmp_path):
    convert(toy_ml, tmp_path / "out")
    smp, beh = _table(tmp_path / "out" / "samples.parquet"), _table(tmp_path / "out" / "behaviors.parquet")
    u1 = smp["user_id"] == 1
    # the last 20% of user 1's 10 ratings: the two rated at t = 900; neither sees the other
    assert sorted(smp["ts"][u1].tolist()) == [900_000, 900_000]
    assert smp["hist_len"][u1].tolist() == [8, 8]
    # labels: rating >= 4 -> movie 5 (5.0) clicked, movie 2 (3.0) not; item ids 2 and 1
    assert dict(zip(smp["item_id"][u1].tolist(), smp["label"][u1].tolist())) == {2: 1, 1: 0}
    # tagged: within 24 h of the rating only
    b1 = beh["user_id"] == 1
    assert beh["tagged"][b1].tolist()[:2] == [1.0, 0.0] and beh["tagged"].sum() == 1
    assert beh["rating"][b1][:2].tolist() == [2.5, 4.0]


@pytest.mark.skipif(not (DEFAULT_DIR / "ratings.csv").is_file(), reason="ml-latest-small not present")
def test_real_movielens_has_no_leak_and_splits_by_time(tmp_path):
    meta = convert(DEFAULT_DIR, tmp_path)
    assert meta["n_items"] == 9742 and meta["n_users"] == 610 and meta["n_behaviors"] == 100_836
    assert 0.4 < meta["positive_rate"] < 0.55
    d = load_dataset(tmp_path)
    for split in ("train", "val", "test"):
        s = d.split(split)
        start = d.offsets[s.user_row]
        last_seen = d.beh_ts[np.maximum(start + s.hist_len - 1, 0)]
        assert ((s.hist_len == 0) | (last_seen < s.ts)).all(), split  # history strictly before the request
        nxt = np.minimum(start + s.hist_len, len(d.beh_ts) - 1)
        assert (d.beh_ts[nxt] >= s.ts).all(), split  # and nothing visible is left out
    # per user, train targets precede val targets, which precede test targets
    tr, va, te = (d.split(x) for x in ("train", "val", "test"))
    for u in np.unique(te.user_id)[:100]:
        assert tr.ts[tr.user_id == u].max() <= va.ts[va.user_id == u].min() <= te.ts[te.user_id == u].min()
    b, _ = next(d.batches("test", 64, 500))
    assert (b.seq_ts[b.seq_mask] < b.now[:, None].expand_as(b.seq_ts)[b.seq_mask]).all()
