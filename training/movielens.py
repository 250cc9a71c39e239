"""MovieLens (ml-latest-small) in the training on-disk format of docs/contracts.md.

Mapping (see ../shared/data/README.md):
  * items: movieId remapped to dense ids 1..N in movieId order (0 is never an item); `genre` = the
    first listed genre, ids 1..G over the sorted genre names ("(no genres listed)" is one of them);
    `year` = release year from the title's trailing "(YYYY)", 0 when absent (13 titles);
    `n_ratings`, `mean_rating` (x 10) = statistics of the movie's history-only ratings (those that
    are no sample's target; `item_rating_stats`), as a catalog snapshot would hold them;
  * behaviors: every rating, ts in ms; stored cross values `rating` (0.5-5) and `tagged` (1 if the
    user tagged the movie within 24 h after rating it: a tag of the same visit. Later tags are
    separate events an immutable behavior record cannot carry without leaking the future);
  * samples: per user, ratings in time order; the last `target_frac` (default 20%) become targets
    with label = rating >= 4 and request time = the rating's time. hist_len = the number of the
    user's ratings strictly before that time, so neither the target nor ratings given in the same
    second (23% of ratings share their second with another) are visible.
  * split: per user by time among the user's targets: the newest 20% test, the 20% before them val,
    the rest train (at least one each: users have >= 20 ratings, hence >= 4 targets). This is how the
    model is used (it scores a user's next items from the past); every user appears in every split,
    which is what GAUC needs, and no sample's history reaches past its own request time.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.schemas import movielens_schema

log = logging.getLogger(__name__)

# The project's shared folder lies beside the repository (../shared); TWIN_MOVIELENS_DIR overrides.
DEFAULT_DIR = Path(os.environ.get(
    "TWIN_MOVIELENS_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"))
TAG_WINDOW_MS = 24 * 3_600_000
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_KEY = 1_000_000_000  # user * _KEY + movieId: one int64 key per (user, movie)
_KEY_TS = 10**14  # row * _KEY_TS + ts (ms < 10^14 until year 5138)


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise ValueError(f"MovieLens file {path} not found (expected the ml-latest-small layout)")
    return pacsv.read_csv(path)


def movie_features(movies: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """-> movieId sorted [N], genre ids [N] (1..G), year [N] (0 = unknown), genre names (id - 1)."""
    mid = movies.column("movieId").to_numpy()
    order = np.argsort(mid, kind="stable")
    mid = mid[order]
    if (np.diff(mid) == 0).any():
        raise ValueError("movies.csv has duplicate movieId")
    titles = [movies.column("title")[int(i)].as_py() for i in order]
    genres = [movies.column("genres")[int(i)].as_py() for i in order]
    primary = [g.split("|")[0] for g in genres]
    names = sorted({x for g in genres for x in g.split("|")})
    gid = {n: i + 1 for i, n in enumerate(names)}
    year = np.array([int(m.group(1)) if (m := _YEAR.search(t.strip())) else 0 for t in titles], dtype=np.int64)
    return mid.astype(np.int64), np.array([gid[p] for p in primary], dtype=np.int64), year, names


def _tagged(tags: pa.Table, user: np.ndarray, movie: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """float32 [n] per rating: 1 if the user's first tag on the movie came no later than TAG_WINDOW_MS
    after the rating. A tags.csv without rows (its columns then have no type) tags nothing."""
    if tags.num_rows == 0:
        return np.zeros(len(user), np.float32)
    t_key = tags.column("userId").to_numpy().astype(np.int64) * _KEY + tags.column("movieId").to_numpy()
    t_ts = tags.column("timestamp").to_numpy().astype(np.int64) * 1000
    t_order = np.argsort(t_key, kind="stable")
    keys, t_start = np.unique(t_key[t_order], return_index=True)
    first_tag = np.minimum.reduceat(t_ts[t_order], t_start)  # [n_pairs]
    r_key = user * _KEY + movie
    k = np.minimum(np.searchsorted(keys, r_key), len(keys) - 1)
    return ((keys[k] == r_key) & (first_tag[k] <= ts + TAG_WINDOW_MS)).astype(np.float32)


def item_rating_stats(item: np.ndarray, rating: np.ndarray, is_target: np.ndarray, n_items: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per item id 1..n_items: (ratings count, mean rating x 10 rounded, 0 when none), int64 [n_items],
    over the HISTORY-ONLY ratings: those that are no sample's target. So no label of any split is in
    an item's statistics. They are a static snapshot, as a serving catalog holds them: a target's
    item statistic may include other users' ratings made after the target's own time (not its
    label); the plain regression of training.baselines reads strictly earlier ratings instead."""
    keep = ~is_target
    count = np.bincount(item[keep], minlength=n_items + 1)[1:]
    total = np.bincount(item[keep], weights=rating[keep], minlength=n_items + 1)[1:]
    mean_x10 = np.where(count > 0, np.rint(10.0 * total / np.maximum(count, 1)), 0).astype(np.int64)
    return count.astype(np.int64), mean_x10


def _split_by_time(user: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    """Split index per target (targets grouped by user, time-ordered): newest 20% test, 20% val."""
    first = np.r_[0, np.cumsum(n_targets)[:-1]]
    rank = np.arange(len(user)) - np.repeat(first, n_targets)  # 0 = the user's oldest target
    m = np.repeat(n_targets, n_targets)
    n_hold = np.maximum(1, np.rint(0.2 * m)).astype(np.int64)
    return np.where(rank >= m - n_hold, 2, np.where(rank >= m - 2 * n_hold, 1, 0))


def convert(ml_dir: str | Path, out_dir: str | Path, target_frac: float = 0.2) -> dict:
    """Write MovieLens in the training format to `out_dir`; returns the `meta` dict."""
    if not 0.0 < target_frac < 1.0:
        raise ValueError(f"target_frac must be in (0, 1), got {target_frac}")
    src, out = Path(ml_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mid, genre, year, genre_names = movie_features(_read(src / "movies.csv"))
    item_id = np.arange(1, len(mid) + 1, dtype=np.int64)

    r = _read(src / "ratings.csv")
    user = r.column("userId").to_numpy().astype(np.int64)
    movie = r.column("movieId").to_numpy().astype(np.int64)
    rating = r.column("rating").to_numpy().astype(np.float32)
    ts = r.column("timestamp").to_numpy().astype(np.int64) * 1000
    pos = np.searchsorted(mid, movie)
    if (pos >= len(mid)).any() or (mid[np.minimum(pos, len(mid) - 1)] != movie).any():
        raise ValueError("ratings.csv refers to movies missing from movies.csv")
    if user.max(initial=0) >= 2**63 // _KEY or len(np.unique(user)) >= 2**63 // _KEY_TS:
        raise ValueError(f"too many users ({user.max()}) for this loader's int64 keys (built for ml-latest-small)")
    order = np.lexsort((movie, ts, user))  # by user, then time (ties by movieId: deterministic)
    user, movie, rating, ts, item = user[order], movie[order], rating[order], ts[order], item_id[pos[order]]

    tagged = _tagged(_read(src / "tags.csv"), user, movie, ts)

    # targets: the last target_frac of each user's ratings
    uids, start, counts = np.unique(user, return_index=True, return_counts=True)
    n_t = np.maximum(1, np.rint(target_frac * counts)).astype(np.int64)
    t_user_row = np.repeat(np.arange(len(uids)), n_t)
    first_t = np.r_[0, np.cumsum(n_t)[:-1]]
    t_idx = np.repeat(start + counts - n_t, n_t) + np.arange(len(t_user_row)) - np.repeat(first_t, n_t)
    # hist_len: the user's ratings strictly before the target's second ((user row, ts) is sorted)
    row = np.repeat(np.arange(len(uids)), counts)
    key = row * _KEY_TS + ts
    hist_len = np.searchsorted(key, key[t_idx], side="left") - start[t_user_row]
    split = _split_by_time(t_user_row, n_t)
    schema = movielens_schema(len(mid) + 1, len(genre_names) + 1)

    is_target = np.zeros(len(ts), bool)
    is_target[t_idx] = True
    n_ratings, mean_x10 = item_rating_stats(item, rating, is_target, len(mid))
    pq.write_table(pa.table({"item_id": item_id, "genre": genre, "year": year, "n_ratings": n_ratings,
                             "mean_rating": mean_x10}), out / "items.parquet")
    pq.write_table(pa.table({"user_id": user, "item_id": item, "ts": ts, "rating": rating, "tagged": tagged}),
                   out / "behaviors.parquet")
    labels = (rating[t_idx] >= 4.0).astype(np.int8)
    pq.write_table(pa.table({
        "user_id": user[t_idx], "item_id": item[t_idx], "ts": ts[t_idx], "label": labels,
        "hist_len": hist_len, "split": pa.array(np.array(["train", "val", "test"])[split]),
    }), out / "samples.parquet")
    meta = {"source": "movielens", "ml_dir": str(src), "target_frac": target_frac, "n_items": len(mid),
            "n_users": len(uids), "n_behaviors": len(ts), "n_samples": len(t_idx),
            "positive_rate": float(labels.mean()), "genres": genre_names,
            "samples_per_split": {s: int((split == i).sum()) for i, s in enumerate(("train", "val", "test"))}}
    (out / "schema.json").write_text(json.dumps({**schema.to_dict(), "meta": meta}, indent=1))
    log.info("MovieLens in %s: %d users, %d ratings, samples %s", out, len(uids), len(ts), meta["samples_per_split"])
    return meta
