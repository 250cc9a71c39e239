"""Synthetic lifelong user-behavior data, generated from a small latent model of users and items.

Why synthetic: the only real interaction data at hand (MovieLens) has histories of hundreds of
behaviors; TWIN is built for 10^4-10^5. The generator below is written from first principles of
short-video consumption, not tuned to make any model win; every constant is stated here.

Catalog (items have ids 1..N; 0 is never used so it can act as padding)
  * categories 1..C, each with a typical video length (log-uniform in [8 s, 600 s]);
  * authors 1..A; each has a home category (every category gets at least one author) and a
    log-normal "size" (how many items they post). An item's author is drawn by size; its category
    is the author's home category with probability 0.9, else uniform: authors mostly stay in one
    category, as creators do;
  * duration_s = the category's typical length x LogNormal(0, 0.6), clipped to [1, 3600] s;
  * popularity: Zipf(1.1) over a random permutation of the items (p(rank r) ~ r^-1.1).

Users (ids 1..U)
  * history length ~ LogNormal(log median, sigma), clipped to [min, cap]; the history spans a
    log-normal number of days (median `span_days`) ending within the last week before T_END;
  * K = 1 + Poisson(3) interests (at most 8), each a category (distinct, drawn by the category's
    total popularity) with 3 favourite authors (drawn from the category's items by popularity) and
    a Dirichlet(1) weight w_k;
  * interest lifetimes on the user's own time axis tau in [0, 1] (0 = first behavior, 1 = request):
    interest 0 lives all along; every other one is, with probability 0.35, *dormant* (it lived in
    [s, e] with e ~ U(0.25, 0.7), length ~ U(0.15, 0.5): ended months before the request), else
    active at the request, starting at 0 (half of them, long-lived) or at U(0, 0.8) (drift: new
    tastes appear over time).

Latent affinity of a user for an item (the ground truth everything below depends on)
  a(u, i) = sum_k g_k * [cat(i) == c_k] * (1 + [author(i) in fav_k]),   g_k = 0.5 + 0.5 * K * w_k
  so a matching category counts about 1, a favourite author about 2, anything else 0. Dormant
  interests count fully: they are still the user's taste, just not exercised lately.

Behaviors (the lifelong sequence; cross features K_c = play_ratio, liked, and the time stamp)
  * times: uniform over the user's span, sorted;
  * with probability 0.15 the user explores (an item by global popularity); otherwise the item
    comes from one of the interests alive at that time (chosen by weight): with probability
    p_author ~ U(0.3, 0.7) (per interest) from a favourite author, else from the category, both by
    item popularity. If no interest is alive the behavior is an exploration;
  * play_ratio = sigmoid(-0.8 + 1.2 a - 0.35 log(duration / 30 s) + N(0, 0.8)): users finish what
    they like and long videos less;
  * liked ~ Bernoulli(sigmoid(-5.5 + 1.2 a + 2 (play_ratio - 0.5))): likes are rare (~10%).

Samples (a click label for a (user, target) pair at request time, after the whole history)
  * one request per user: all its samples share the time t_end + U(1 min, 1 day) (one impression
    list scored at once);
  * targets: 30% from an active interest, 20% from a dormant interest (the share moves to active
    interests for users without one), 30% by global popularity, 20% uniform; interest targets
    are drawn like behaviors. This mix makes labels roughly balanced (about 50% positive);
  * click ~ Bernoulli(sigmoid(-2.3 + 1.5 a + 0.25 z_pop(i) + b_u + N(0, 0.5))), z_pop the
    standardized log popularity, b_u ~ N(0, 0.3) a per-user click propensity. The noiseless part
    -2.3 + 1.5 a + 0.25 z_pop + b_u is written as the sample column `oracle_logit`: the ceiling any
    model is read against (no model may read it).
  So the label depends on the dormant interests, which only the older part of the history shows:
  a model restricted to the 100 most recent behaviors cannot see them, one reading the whole
  history can. The sample column `target_kind` (0 active, 1 dormant, 2 popular, 3 uniform) is
  kept for analysis; models must not read it (nor `oracle_logit`).

This is the `categories` family: interests are categories. A `Family` swaps the catalog, the users'
interests, the affinity and the draw of an interest's item (and, optionally, of its targets) and keeps
everything else above; training/synthetic_topics.py is the family whose interests are finer than
categories.

Item statistic (an inherent feature, as a production catalog would carry it)
  * views = how many behaviors in the whole data set are of the item (every user's history; no
    label is involved): the observable trace of the latent popularity.

Users are split 80/10/10 into train/val/test (a seeded permutation), so no user leaks across
splits. Output: the on-disk format of docs/contracts.md. Generation is vectorized numpy per chunk
of users, each chunk with its own seeded generator, so a preset is reproducible bit for bit.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from training.schemas import synthetic_schema

log = logging.getLogger(__name__)

T_END_MS = 1_717_200_000_000  # 2024-06-01 00:00 UTC: every history ends within the week before
MS_PER_DAY = 86_400_000
MAX_INTERESTS = 8
N_FAV_AUTHORS = 3
SPLITS = ("train", "val", "test")
TARGET_KINDS = ("active", "dormant", "popular", "uniform")


@dataclass(frozen=True)
class SyntheticConfig:
    n_items: int
    n_authors: int
    n_categories: int
    n_users: int
    hist_median: float
    hist_sigma: float
    hist_min: int
    hist_cap: int
    span_days: float = 365.0
    samples_per_user: int = 32
    users_per_chunk: int = 500
    seed: int = 0
    zipf_a: float = 1.1
    p_explore: float = 0.15
    p_dormant: float = 0.35
    target_mix: tuple[float, float, float, float] = (0.30, 0.20, 0.30, 0.20)  # TARGET_KINDS order

    def __post_init__(self) -> None:
        for name in ("n_items", "n_authors", "n_categories", "n_users", "hist_min", "samples_per_user",
                     "users_per_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_authors < self.n_categories:
            raise ValueError(f"need n_authors >= n_categories, got {self.n_authors} < {self.n_categories}")
        if self.n_categories < MAX_INTERESTS:
            raise ValueError(f"need n_categories >= {MAX_INTERESTS}, got {self.n_categories}")
        if not self.hist_min <= self.hist_median <= self.hist_cap:
            raise ValueError(f"need hist_min <= hist_median <= hist_cap, got {self.hist_min}, "
                             f"{self.hist_median}, {self.hist_cap}")
        if abs(sum(self.target_mix) - 1.0) > 1e-9 or min(self.target_mix) < 0:
            raise ValueError(f"target_mix must be 4 non-negative shares summing to 1, got {self.target_mix}")


PRESETS: dict[str, SyntheticConfig] = {
    # `make train`: two models in a few minutes on 2 CPU cores.
    "ci": SyntheticConfig(n_items=20_000, n_authors=1_000, n_categories=50, n_users=2_500,
                          hist_median=400, hist_sigma=0.7, hist_min=20, hist_cap=1_500),
    # The product's regime at a size 2 cores can train on (issue "A TWIN that learns"): histories
    # of median 3,000 reaching 10,000+ (p95 ~11,000, capped at 20,000; trained at max_len 10,000 =
    # W1's L), 256 scored targets per user (one request), 50,000 items. 256 rather than 64: with 64
    # the model overfitted its id embeddings after 2 epochs (TWIN validation AUC peak 0.866, test
    # 0.864 < 0.876 of a regression on match counts); the targets are cheap, the history is shared.
    "lifelong": SyntheticConfig(n_items=50_000, n_authors=2_500, n_categories=100, n_users=2_000,
                                hist_median=3_000, hist_sigma=0.8, hist_min=100, hist_cap=20_000,
                                span_days=730.0, samples_per_user=256, users_per_chunk=100),
    "small": SyntheticConfig(n_items=100_000, n_authors=5_000, n_categories=100, n_users=5_000,
                             hist_median=1_500, hist_sigma=0.8, hist_min=50, hist_cap=10_000),
    # DESIGN.md sec. 4: 1M items, Zipf(1.1), 10K users, log-normal lengths (median a few thousand,
    # tail to 100K): sigma 1.2 puts p99.9 near 100K.
    "bench": SyntheticConfig(n_items=1_000_000, n_authors=50_000, n_categories=200, n_users=10_000,
                             hist_median=3_000, hist_sigma=1.2, hist_min=100, hist_cap=100_000,
                             span_days=730.0, users_per_chunk=200),
    # unit tests: seconds.
    "tiny": SyntheticConfig(n_items=2_000, n_authors=100, n_categories=20, n_users=300,
                            hist_median=150, hist_sigma=0.5, hist_min=20, hist_cap=400,
                            samples_per_user=12, users_per_chunk=100),
}


def preset(name: str, **overrides) -> SyntheticConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class GroupSampler:
    """Draws one element of a given group per request, with probability proportional to weight
    within the group, for many requests at once (one `searchsorted`).

    Elements are sorted by group; `cum` holds group + within-group CDF, so a request (g, u) with
    u ~ U[0, 1) finds its element by searching g + u.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, n_groups: int):
        order = np.argsort(groups, kind="stable")
        g = groups[order].astype(np.float64)
        w = weights[order].astype(np.float64)
        totals = np.bincount(groups, weights=weights, minlength=n_groups)  # [G]
        self.nonempty = totals > 0
        self.starts = np.searchsorted(g, np.arange(n_groups))  # [G] first element of each group
        self.ends = np.searchsorted(g, np.arange(n_groups), side="right")
        within = np.cumsum(w)
        before = np.concatenate([[0.0], within])[self.starts]  # [G] weight of all earlier groups
        gi = groups[order]
        self.cum = gi + (within - before[gi]) / np.where(totals[gi] > 0, totals[gi], 1.0)
        self.order = order

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        if not self.nonempty[groups].all():
            bad = np.unique(groups[~self.nonempty[groups]])[:5]
            raise ValueError(f"cannot sample from empty groups {bad.tolist()}")
        pos = np.searchsorted(self.cum, groups + u, side="right")
        # float round-off at a group's edges must not leak into the neighbouring group
        pos = np.clip(pos, self.starts[groups], self.ends[groups] - 1)
        return self.order[pos]


@dataclass
class Catalog:
    """Item features by item index (item id = index + 1)."""

    author: np.ndarray  # int64 [N] author ids 1..A
    category: np.ndarray  # int64 [N] category ids 1..C
    duration_s: np.ndarray  # int64 [N]
    pop: np.ndarray  # float64 [N] popularity, sums to 1
    z_pop: np.ndarray  # float64 [N] standardized log popularity
    by_category: GroupSampler
    by_author: GroupSampler
    by_pop: GroupSampler
    category_pop: np.ndarray  # float64 [C+1] total popularity per category id

    @property
    def n(self) -> int:
        return len(self.author)


def make_catalog(cfg: SyntheticConfig, rng: np.random.Generator) -> Catalog:
    n, n_a, n_c = cfg.n_items, cfg.n_authors, cfg.n_categories
    cat_weight = rng.lognormal(0.0, 0.5, n_c)
    home = np.concatenate([rng.permutation(n_c), rng.choice(n_c, n_a - n_c, p=cat_weight / cat_weight.sum())]) + 1
    author_size = rng.lognormal(0.0, 1.0, n_a)
    author = rng.choice(n_a, n, p=author_size / author_size.sum()) + 1  # [N]
    off_home = rng.random(n) < 0.1
    category = np.where(off_home, rng.integers(1, n_c + 1, n), home[author - 1])
    return _finish_catalog(cfg, author, category, rng)


def _finish_catalog(cfg: SyntheticConfig, author: np.ndarray, category: np.ndarray,
                    rng: np.random.Generator) -> Catalog:
    """Durations, popularity and samplers of items whose authors and categories are drawn."""
    n, n_a, n_c = len(author), cfg.n_authors, cfg.n_categories
    cat_len = np.exp(rng.uniform(np.log(8.0), np.log(600.0), n_c + 1))
    duration = np.clip(np.rint(cat_len[category] * rng.lognormal(0.0, 0.6, n)), 1, 3600).astype(np.int64)
    rank = rng.permutation(n) + 1
    pop = rank.astype(np.float64) ** -cfg.zipf_a
    pop /= pop.sum()
    logp = np.log(pop)
    return Catalog(
        author=author.astype(np.int64), category=category.astype(np.int64), duration_s=duration, pop=pop,
        z_pop=(logp - logp.mean()) / logp.std(),
        by_category=GroupSampler(category, pop, n_c + 1),
        by_author=GroupSampler(author, pop, n_a + 1),
        by_pop=GroupSampler(np.zeros(n, dtype=np.int64), pop, 1),
        category_pop=np.bincount(category, weights=pop, minlength=n_c + 1),
    )


@dataclass
class Users:
    """Latent state of a chunk of users (row = user in chunk)."""

    ids: np.ndarray  # int64 [U]
    hist_len: np.ndarray  # int64 [U]
    t_start: np.ndarray  # int64 [U] ms
    t_end: np.ndarray  # int64 [U] ms
    valid: np.ndarray  # bool [U, K] interest exists
    cat: np.ndarray  # int64 [U, K] interest category
    fav: np.ndarray  # int64 [U, K, 3] favourite authors
    weight: np.ndarray  # float64 [U, K] Dirichlet weights (0 where invalid)
    gain: np.ndarray  # float64 [U, K] g_k of the affinity
    p_author: np.ndarray  # float64 [U, K]
    start: np.ndarray  # float64 [U, K] interest lifetime on the user's tau axis
    end: np.ndarray  # float64 [U, K]
    bias: np.ndarray  # float64 [U] click propensity

    @property
    def dormant(self) -> np.ndarray:  # bool [U, K]
        return self.valid & (self.end < 1.0)

    @property
    def active(self) -> np.ndarray:  # bool [U, K] alive at the request
        return self.valid & (self.end >= 1.0)


def make_users(cfg: SyntheticConfig, cat: Catalog, ids: np.ndarray, rng: np.random.Generator) -> Users:
    u, kk = len(ids), MAX_INTERESTS
    hist, t_start, t_end = _history(cfg, u, rng)
    n_int = np.minimum(1 + rng.poisson(3.0, u), kk)
    valid = np.arange(kk)[None, :] < n_int[:, None]  # [U, K]
    # K distinct categories per user by popularity: Gumbel top-k over log weights.
    logits = np.log(cat.category_pop[1:])[None, :] + rng.gumbel(size=(u, len(cat.category_pop) - 1))
    icat = np.argsort(-logits, axis=1)[:, :kk] + 1  # [U, K]
    # Favourite authors: authors of items drawn from the category by popularity.
    fav_items = cat.by_category.sample(np.repeat(icat.ravel(), N_FAV_AUTHORS), rng.random(u * kk * N_FAV_AUTHORS))
    fav = cat.author[fav_items].reshape(u, kk, N_FAV_AUTHORS)
    w = rng.gamma(1.0, size=(u, kk)) * valid
    w /= w.sum(axis=1, keepdims=True)
    start, end = _lifetimes(cfg, valid, rng)
    return Users(
        ids=ids, hist_len=hist, t_start=t_start, t_end=t_end,
        valid=valid, cat=icat, fav=fav, weight=w, gain=(0.5 + 0.5 * n_int[:, None] * w) * valid,
        p_author=rng.uniform(0.3, 0.7, (u, kk)), start=start, end=end, bias=rng.normal(0.0, 0.3, u),
    )


def _history(cfg: SyntheticConfig, u: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """History length, start and end (ms) of `u` users."""
    hist = np.clip(np.rint(rng.lognormal(np.log(cfg.hist_median), cfg.hist_sigma, u)), cfg.hist_min, cfg.hist_cap)
    span = np.clip(rng.lognormal(np.log(cfg.span_days), 0.5, u), 30.0, 3 * cfg.span_days) * MS_PER_DAY
    t_end = T_END_MS - rng.integers(0, 7 * MS_PER_DAY, u)
    return hist.astype(np.int64), (t_end - span).astype(np.int64), t_end


def _lifetimes(cfg: SyntheticConfig, valid: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start and end [U, K] of each interest on the user's tau axis (dormant / active / drift)."""
    shape = valid.shape
    dormant = valid & (rng.random(shape) < cfg.p_dormant)
    dormant[:, 0] = False  # interest 0 lives all along
    d_end = rng.uniform(0.25, 0.7, shape)
    d_start = np.clip(d_end - rng.uniform(0.15, 0.5, shape), 0.0, None)
    a_start = np.where(rng.random(shape) < 0.5, 0.0, rng.uniform(0.0, 0.8, shape))
    a_start[:, 0] = 0.0
    return np.where(dormant, d_start, a_start), np.where(dormant, d_end, 1.0)


def affinity(users: Users, cat: Catalog, row: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Latent affinity a(u, i) (module docstring) of user rows `row` [n] for item indices `item` [n]."""
    cat_match = cat.category[item][:, None] == users.cat[row]  # [n, K]
    author_match = (cat.author[item][:, None, None] == users.fav[row]).any(axis=2)  # [n, K]
    return (users.gain[row] * cat_match * (1.0 + author_match)).sum(axis=1)


def _category_item(users: Users, cat: Catalog, row: np.ndarray, k: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """One item of interest k's category per user row, by popularity."""
    c = users.cat[row, k]
    return cat.by_category.sample(c, rng.random(len(c)))


@dataclass(frozen=True)
class Family:
    """What a generator family defines. Everything else (behavior times, exploration, cross
    features, targets, labels, splits, files) is this module's, shared by every family."""

    name: str
    make_catalog: Callable  # (cfg, rng) -> Catalog
    make_users: Callable  # (cfg, catalog, ids, rng) -> Users
    affinity: Callable  # (users, catalog, row [n], item [n]) -> a(u, i) [n]
    interest_item: Callable  # (users, catalog, row [n], k [n], rng) -> item [n] of interest k, not via an author
    interest_target: Callable | None = None  # same + family -> a target of interest k; None: drawn like behaviors


CATEGORIES = Family("categories", make_catalog, make_users, affinity, _category_item)


def _item_from_interest(users: Users, cat: Catalog, row: np.ndarray, k: np.ndarray, rng: np.random.Generator,
                        family: Family = CATEGORIES) -> np.ndarray:
    """One item per (user row, interest k): a favourite author's item or one of the interest's own."""
    n = len(row)
    by_author = rng.random(n) < users.p_author[row, k]
    out = np.empty(n, dtype=np.int64)
    a = users.fav[row[by_author], k[by_author], rng.integers(0, N_FAV_AUTHORS, by_author.sum())]
    out[by_author] = cat.by_author.sample(a, rng.random(len(a)))
    out[~by_author] = family.interest_item(users, cat, row[~by_author], k[~by_author], rng)
    return out


def _pick(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: weights [n, K] (rows with positive sum), u [n] -> index [n]."""
    cum = np.cumsum(weights, axis=1)
    return np.minimum((cum < (u * cum[:, -1])[:, None]).sum(axis=1), weights.shape[1] - 1)


def make_behaviors(cfg: SyntheticConfig, cat: Catalog, users: Users, rng: np.random.Generator,
                   family: Family = CATEGORIES) -> dict[str, np.ndarray]:
    row = np.repeat(np.arange(len(users.ids)), users.hist_len)  # [n] user row of each behavior
    n = len(row)
    tau = np.sort(row + rng.random(n)) - row  # sorted within each user (rows are contiguous)
    alive = users.valid[row] & (users.start[row] <= tau[:, None]) & (tau[:, None] <= users.end[row])  # [n, K]
    w = users.weight[row] * alive
    explore = (rng.random(n) < cfg.p_explore) | (w.sum(axis=1) <= 0)
    item = np.empty(n, dtype=np.int64)
    item[explore] = cat.by_pop.sample(np.zeros(explore.sum(), dtype=np.int64), rng.random(explore.sum()))
    ir = np.flatnonzero(~explore)
    k = _pick(w[ir], rng.random(len(ir)))
    item[ir] = _item_from_interest(users, cat, row[ir], k, rng, family)
    a = family.affinity(users, cat, row, item)
    play = _sigmoid(-0.8 + 1.2 * a - 0.35 * np.log(cat.duration_s[item] / 30.0) + rng.normal(0.0, 0.8, n))
    liked = rng.random(n) < _sigmoid(-5.5 + 1.2 * a + 2.0 * (play - 0.5))
    span = (users.t_end - users.t_start)[row]
    return {
        "user_id": users.ids[row],
        "item_id": item + 1,
        "ts": users.t_start[row] + np.floor(tau * span).astype(np.int64),
        "play_ratio": play.astype(np.float32),
        "liked": liked.astype(np.float32),
    }


def make_samples(cfg: SyntheticConfig, cat: Catalog, users: Users, split: np.ndarray,
                 rng: np.random.Generator, family: Family = CATEGORIES) -> dict[str, np.ndarray]:
    s = cfg.samples_per_user
    row = np.repeat(np.arange(len(users.ids)), s)
    n = len(row)
    kind = rng.choice(4, n, p=np.asarray(cfg.target_mix))
    has_dormant = users.dormant.any(axis=1)[row]
    kind[(kind == 1) & ~has_dormant] = 0
    item = np.empty(n, dtype=np.int64)
    target = family.interest_target or _item_from_interest
    for kd, mask in ((0, users.active), (1, users.dormant)):
        sel = np.flatnonzero(kind == kd)
        k = _pick(users.weight[row[sel]] * mask[row[sel]], rng.random(len(sel)))
        item[sel] = target(users, cat, row[sel], k, rng, family)
    sel = np.flatnonzero(kind == 2)
    item[sel] = cat.by_pop.sample(np.zeros(len(sel), dtype=np.int64), rng.random(len(sel)))
    sel = np.flatnonzero(kind == 3)
    item[sel] = rng.integers(0, cat.n, len(sel))
    oracle = -2.3 + 1.5 * family.affinity(users, cat, row, item) + 0.25 * cat.z_pop[item] + users.bias[row]
    logit = oracle + rng.normal(0.0, 0.5, n)
    label = rng.random(n) < _sigmoid(logit)
    request = users.t_end + rng.integers(60_000, MS_PER_DAY, len(users.ids))  # [U] after the whole history
    return {
        "user_id": users.ids[row],
        "item_id": item + 1,
        "ts": request[row],
        "label": label.astype(np.int8),
        "hist_len": users.hist_len[row],
        "split": np.asarray(SPLITS, dtype=object)[split[row]],
        "target_kind": kind.astype(np.int8),
        "oracle_logit": oracle.astype(np.float32),
    }


def user_splits(n_users: int, seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of users 1..U: a seeded 80/10/10 permutation."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(n_users)
    out = np.zeros(n_users, dtype=np.int64)
    out[perm[int(0.8 * n_users):int(0.9 * n_users)]] = 1
    out[perm[int(0.9 * n_users):]] = 2
    return out


def _beh_schema() -> pa.Schema:
    return pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()),
                      ("play_ratio", pa.float32()), ("liked", pa.float32())])


def _sample_schema() -> pa.Schema:
    return pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.int64()),
                      ("label", pa.int8()), ("hist_len", pa.int64()), ("split", pa.string()),
                      ("target_kind", pa.int8()), ("oracle_logit", pa.float32())])


def generate(cfg: SyntheticConfig, out_dir: str | Path, progress: bool = True, family: Family = CATEGORIES) -> dict:
    """Write a data set of `family` to `out_dir` (docs/contracts.md format); returns the `meta` dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat = family.make_catalog(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
    schema = synthetic_schema(cfg.n_items + 1, cfg.n_authors + 1, cfg.n_categories + 1)
    views = np.zeros(cat.n + 1, np.int64)  # [N + 1] behaviors per item id
    split = user_splits(cfg.n_users, cfg.seed)
    n_beh = n_pos = n_samples = 0
    starts = range(0, cfg.n_users, cfg.users_per_chunk)
    with pq.ParquetWriter(out / "behaviors.parquet", _beh_schema()) as bw, \
            pq.ParquetWriter(out / "samples.parquet", _sample_schema()) as sw:
        for ci, lo in enumerate(tqdm(starts, desc="users", unit="chunk", disable=not progress)):
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, ci]))
            ids = np.arange(lo, min(lo + cfg.users_per_chunk, cfg.n_users), dtype=np.int64) + 1
            users = family.make_users(cfg, cat, ids, rng)
            beh = make_behaviors(cfg, cat, users, rng, family)
            smp = make_samples(cfg, cat, users, split[ids - 1], rng, family)
            bw.write_table(pa.table(beh, schema=_beh_schema()))
            sw.write_table(pa.table(smp, schema=_sample_schema()))
            views += np.bincount(beh["item_id"], minlength=cat.n + 1)
            n_beh += len(beh["ts"])
            n_samples += len(smp["label"])
            n_pos += int(smp["label"].sum())
    items = pa.table({"item_id": np.arange(1, cat.n + 1, dtype=np.int64), "author_id": cat.author,
                      "category": cat.category, "duration_s": cat.duration_s, "views": views[1:]})
    pq.write_table(items, out / "items.parquet")
    meta = {"source": "synthetic", "family": family.name, "config": asdict(cfg), "n_behaviors": n_beh,
            "n_samples": n_samples, "positive_rate": n_pos / max(n_samples, 1)}
    (out / "schema.json").write_text(json.dumps({**schema.to_dict(), "meta": meta}, indent=1))
    log.info("synthetic data in %s: %d behaviors, %d samples, %.3f positive", out, n_beh, n_samples,
             meta["positive_rate"])
    return meta
