"""Plain reference points every model-quality figure stands beside (non-neural, fitted on train only).

  * "oracle": the generator's noiseless click logit (synthetic data only; the sample column
    `oracle_logit`): the ceiling;
  * "category count": the number of behaviors in the user's full visible history that share the
    target's category (`category`, or MovieLens' `genre`); no fitting at all;
  * "LR match counts (full history)": a logistic regression on, for every categorical inherent
    feature (item id, author, category...), the count and share of the history's behaviors that
    match the target, plus log history length and log item popularity (the `views` feature, else the
    item's count in the behavior log); "(newest 100)" is the same over the 100 newest behaviors only;
  * "LR five features" (data with a `rating` cross feature, i.e. MovieLens): user's mean rating and
    share of ratings >= 4 over the visible history, log history length, and the item's mean rating and
    log count over ratings made strictly before the sample's time by anyone (global mean when none).

Counts are exact and vectorized: behaviors are sorted by (user, feature value, position), so a
sample's matches among its first h behaviors are two searchsorted lookups.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.dataset import Samples, TrainingData
from training.metrics import auc, gauc, logloss

log = logging.getLogger(__name__)

RECENT = 100  # the window of the "(newest 100)" regression: what the recent-100 model reads


@dataclass
class Reference:
    name: str
    test: dict[str, float]  # auc, gauc, logloss (when the score is a probability)


def _categorical(data: TrainingData) -> list[int]:
    """Columns of item_raw that are categorical ids (no bucket boundaries): item_id, author, category..."""
    return [j for j, f in enumerate(data.schema.inherent) if not f.boundaries]


def match_counts(data: TrainingData, s: Samples, col: int, window: int | None = None) -> np.ndarray:
    """float64 [n]: behaviors among each sample's visible history (the newest `window` of it, or all)
    whose item_raw[:, col] equals the target's."""
    value = data.item_raw[data.beh_item_row, col]  # [N] feature value of every behavior
    user = np.repeat(np.arange(len(data.user_ids)), np.diff(data.offsets))  # [N] user row
    N = len(value)
    uniq, vcode = np.unique(value, return_inverse=True)  # dense codes keep the composite key in int64
    n_codes = max(len(uniq), 1)
    key = (user.astype(np.int64) * n_codes + vcode) * (N + 1) + np.arange(N)  # sorted == (user, value, index)
    key.sort()
    target = data.item_raw[s.item_row, col]
    code = np.minimum(np.searchsorted(uniq, target), n_codes - 1)
    known = uniq[code] == target if len(uniq) else np.zeros(len(target), bool)
    base = (s.user_row.astype(np.int64) * n_codes + code) * (N + 1)
    start = data.offsets[s.user_row]
    lo = start + (0 if window is None else np.maximum(s.hist_len - window, 0))
    hi = start + s.hist_len
    count = np.searchsorted(key, base + hi) - np.searchsorted(key, base + lo)
    return np.where(known, count, 0).astype(np.float64)


def _popularity(data: TrainingData, s: Samples) -> np.ndarray:
    names = data.schema.inherent_names
    if "views" in names:
        return data.item_raw[s.item_row, names.index("views")].astype(np.float64)
    return np.bincount(data.beh_item_row, minlength=len(data.item_raw))[s.item_row].astype(np.float64)


def count_features(data: TrainingData, s: Samples, window: int | None) -> np.ndarray:
    """[n, 2 * n_categorical + 2] the regression's inputs (module docstring)."""
    h = np.minimum(s.hist_len, window) if window is not None else s.hist_len
    cols = [np.log1p(h), np.log1p(_popularity(data, s))]
    for j in _categorical(data):
        c = match_counts(data, s, j, window)
        cols += [np.log1p(c), c / np.maximum(h, 1)]
    return np.stack(cols, axis=1)


def five_features(data: TrainingData, s: Samples) -> np.ndarray:
    """[n, 5] MovieLens' plain regression inputs (module docstring); needs the `rating` cross value."""
    j = data.schema.stored_cross_names().index("rating")
    r = data.beh_cross[:, j].astype(np.float64)
    # the user's first h ratings: prefix sums per user (behaviors are time-ordered per user)
    csum = np.r_[0.0, np.cumsum(r)]
    clike = np.r_[0.0, np.cumsum(r >= 4.0)]
    start = data.offsets[s.user_row]
    h = s.hist_len
    n = np.maximum(h, 1)
    global_mean = float(r.mean())
    u_mean = np.where(h > 0, (csum[start + h] - csum[start]) / n, global_mean)
    u_like = np.where(h > 0, (clike[start + h] - clike[start]) / n, 0.5)
    # the item's ratings strictly before the sample's time, by anyone
    span = int(max(data.beh_ts.max(initial=0), s.ts.max(initial=0))) + 1
    key = data.beh_item_row.astype(np.int64) * span + data.beh_ts  # sorted == (item, time)
    order = np.argsort(key, kind="stable")
    key, r_s = key[order], r[order]
    isum = np.r_[0.0, np.cumsum(r_s)]
    first = np.searchsorted(key, s.item_row.astype(np.int64) * span)  # the item's first rating
    before = np.searchsorted(key, s.item_row.astype(np.int64) * span + s.ts) - first  # strictly earlier
    i_cnt = before.astype(np.float64)
    i_mean = np.where(before > 0, (isum[first + before] - isum[first]) / np.maximum(before, 1), global_mean)
    return np.stack([u_mean, u_like, np.log1p(h), i_mean, np.log1p(i_cnt)], axis=1)


def _fit_lr(feats: dict[str, np.ndarray], data: TrainingData, seed: int) -> np.ndarray:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(feats["train"], data.split("train").label)
    return model.predict_proba(feats["test"])[:, 1]


def _scores(name: str, data: TrainingData, p: np.ndarray, prob: bool) -> Reference:
    s = data.split("test")
    res = {"auc": auc(s.label, p), "gauc": gauc(s.label, p, s.user_id)}
    if prob:
        res["logloss"] = logloss(s.label, p)
    return Reference(name, res)


def references(data: TrainingData, seed: int = 0) -> list[Reference]:
    """Every reference that applies to `data`, on its test split."""
    out = []
    test = data.split("test")
    if "oracle_logit" in test.extra:
        z = test.extra["oracle_logit"].astype(np.float64)
        out.append(_scores("oracle (noiseless logit, ceiling)", data, 1.0 / (1.0 + np.exp(-z)), True))
    names = data.schema.inherent_names
    col = next((names.index(n) for n in ("category", "genre") if n in names), None)
    if col is not None:
        name = names[col]
        out.append(_scores(f"{name} count (full history, no fit)", data, match_counts(data, test, col), False))
    for window, label in ((None, "full history"), (RECENT, f"newest {RECENT}")):
        feats = {sp: count_features(data, data.split(sp), window) for sp in ("train", "test")}
        out.append(_scores(f"LR match counts ({label})", data, _fit_lr(feats, data, seed), True))
    if "rating" in data.schema.stored_cross_names():
        feats = {sp: five_features(data, data.split(sp)) for sp in ("train", "test")}
        out.append(_scores("LR five features (user/item past means)", data, _fit_lr(feats, data, seed), True))
    for r in out:
        log.info("reference %s: %s", r.name, r.test)
    return out

