"""Synthetic lifelong data, second family (`topics`): a user's interests are finer than categories.

Why a second family: in training/synthetic.py an interest *is* a category, so counting the target's
category in the history recovers most of the signal without learning anything. Here items carry a
latent topic vector, a category is a coarse label over several topics, and a user likes regions of
the latent space: a category mixes topics the user likes with topics they don't. The vector is not a
feature (items still show only item_id, author_id, category, duration_s), so only a model that
learns item similarity from ids, authors and co-consumption can recover the finer interest; the
author is its strongest visible proxy (creators post in one or two topics).
Written from first principles like synthetic.py, whose code it shares for everything but the catalog,
the users' interests, the affinity and the draw of an interest's item (`TOPICS`, a
`synthetic.Family`); no constant is tuned to make a model win; every one is stated here.

Latent space: unit vectors in R^d, d = 16 (`dim`); unit(v) = v / ||v||; z ~ N(0, I_d / d) is a noise
vector of norm about 1. Two unrelated unit vectors are ~1.41 apart.

Catalog (items have ids 1..N; 0 is never used so it can act as padding)
  * categories 1..C, each with a centre g_c = unit(N(0, I_d)) and a weight LogNormal(0, 0.5);
  * topics, T = `topics_per_category` x C = 4 C: each has a primary category (every category gets at
    least one topic, the rest by category weight), a secondary category (uniform among the other
    C - 1), a weight LogNormal(0, 0.5) and a centre c_t = unit(g_primary + 1.0 z): topics of one
    category lie ~1.0 apart (closer than unrelated ones) yet distinct;
  * authors 1..A (A >= T): each has a first topic (every topic gets at least one author, the rest by
    topic weight), a second topic (by topic weight; may be the first) and a size LogNormal(0, 1).
    An item's author is drawn by size, its topic is the author's first with probability 0.7, else
    the second: creators post in one or two topics;
  * an item's category is its topic's primary category with probability 0.6, its secondary with 0.3,
    else uniform: a category covers its own ~4 topics, others' secondary ones and scattered items,
    and a topic spans two categories and a few more;
  * latent vector x_i = unit(c_topic + 0.25 z): a topic's items lie ~0.25 from its centre;
  * duration_s and popularity as synthetic.py: the category's typical length (log-uniform in
    [8 s, 600 s]) x LogNormal(0, 0.6), clipped to [1, 3600] s; Zipf(1.1) over a random permutation.

Users (ids 1..U)
  * history length and span, K = 1 + Poisson(3) interests (at most 8) with Dirichlet(1) weights w_k
    and gains g_k = 0.5 + 0.5 K w_k, p_author ~ U(0.3, 0.7), the lifetimes (interest 0 all along,
    others dormant with probability 0.35, else active from 0 or drifting in from U(0, 0.8)) and the
    click propensity b_u ~ N(0, 0.3): exactly as synthetic.py (the same code);
  * interest k is a region around a topic t_k (K distinct topics per user, drawn by the topics' total
    popularity): centre m_k = unit(c_{t_k} + 0.15 z), spread s_k ~ U(0.2, 0.3), and 3 favourite
    authors (the authors of items drawn from topic t_k by popularity). The spreads are below the
    distance between topics on purpose: on a 16-dim sphere a kernel of width 0.4 already puts more
    than half of an interest's mass on the hundreds of unrelated topics (its tail times their
    number), and the interest would no longer be a region.

Latent affinity of a user for an item (the ground truth everything below depends on)
  a(u, i) = sum_k g_k * r_k(x_i) * (1 + [author(i) in fav_k]),
  r_k(x) = exp(-||x - m_k||^2 / (2 s_k^2)) = exp((x . m_k - 1) / s_k^2)
  so an item of the interest's own topic counts about 0.35-0.7 (by where it lies in it; p10-p90), a
  favourite author's item there twice that, another topic of the same category about 0, unless it
  happens to lie near m_k. Dormant interests count fully, as in synthetic.py.

Behaviors: as synthetic.py (the same code: times, exploration 0.15 by popularity, an alive
interest by weight, a favourite author's item with probability p_author, play_ratio, liked), except
the draw of an interest's own item: a topic with probability proportional to its total popularity x
r_k(c_t) (users browse the topics near their interest, by appeal at the topic's centre; with these
spreads almost always t_k itself), then an item of that topic by popularity. Where an item lies
inside its topic shows in play_ratio, liked and the click, not in what is consumed. The formulas
being synthetic.py's and the affinity smaller, likes are rarer here (2.5% of behaviors on `ci`,
against 11% there) and completion lower (mean play_ratio 0.49 against 0.66).

Samples: as synthetic.py (the same code: one request per user, target kinds, the click logit,
`oracle_logit`, `target_kind`), except that an interest's target (kinds active and dormant) comes,
with probability 0.5 (`P_CATEGORY_TARGET`), through the interest's category, as a tag-based
retrieval channel would fetch it: the category of an item of the interest's topic (by popularity),
then any item of that category by popularity; else it is drawn like a behavior. Without these, a
category would mix liked and disliked topics only for the few popular or uniform targets that
happen to fall in the user's categories: on `ci` (test split), the count of the target's category
in the history reaches 68% of the oracle's AUC lift over chance without them, 57% with them, and
80% in synthetic.py. Targets: 40% from an active interest, 30% from a dormant one, 20% by
popularity, 10% uniform (`target_mix`): the one constant chosen for the label rate (roughly
balanced: 44% positive on `ci`, 48% on `lifelong`), not for any model.

Users are split 80/10/10 by synthetic.user_splits; output and reproducibility as synthetic.py.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from training.synthetic import (
    MAX_INTERESTS, N_FAV_AUTHORS, Catalog, Family, GroupSampler, SyntheticConfig, Users, _finish_catalog, _history,
    _item_from_interest, _lifetimes, generate as _generate,
)

AFFINITY_BLOCK = 1 << 15  # behaviors per block of the affinity: bounds the [n, K, d] gather to ~33 MB
P_CATEGORY_TARGET = 0.5  # share of an interest's targets retrieved through its category


@dataclass(frozen=True)
class TopicsConfig(SyntheticConfig):
    # More interest targets than synthetic.py's (0.30, 0.20, 0.30, 0.20), whose mix gives 38%
    # positives on `ci` here: an item of one's own interest scores a ~ 0.5 here against ~1 there, and half
    # of the interest targets come through the category.
    target_mix: tuple[float, float, float, float] = (0.40, 0.30, 0.20, 0.10)
    dim: int = 16
    topics_per_category: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 2 or self.topics_per_category < 1:
            raise ValueError(f"need dim >= 2 and topics_per_category >= 1, got {self.dim}, {self.topics_per_category}")
        if self.n_authors < self.n_topics:
            raise ValueError(f"need n_authors >= n_topics (every topic has an author), got "
                             f"{self.n_authors} < {self.n_topics}")

    @property
    def n_topics(self) -> int:
        return self.topics_per_category * self.n_categories


PRESETS: dict[str, TopicsConfig] = {
    # unit tests: seconds.
    "tiny": TopicsConfig(n_items=2_000, n_authors=100, n_categories=20, n_users=300,
                         hist_median=150, hist_sigma=0.5, hist_min=20, hist_cap=400,
                         samples_per_user=12, users_per_chunk=100),
    # as synthetic.py's ci: fast.
    "ci": TopicsConfig(n_items=20_000, n_authors=1_000, n_categories=50, n_users=2_500,
                       hist_median=400, hist_sigma=0.7, hist_min=20, hist_cap=1_500),
    # histories at TWIN's scale: median 3,000, ~6% above 10,000, capped at 20,000; two years; 256
    # scored targets per user, as synthetic.py's lifelong.
    "lifelong": TopicsConfig(n_items=50_000, n_authors=2_500, n_categories=100, n_users=2_000,
                             hist_median=3_000, hist_sigma=0.8, hist_min=100, hist_cap=20_000,
                             span_days=730.0, samples_per_user=256, users_per_chunk=200),
}


def preset(name: str, **overrides) -> TopicsConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """z ~ N(0, I_d / d) over the last axis: norm about 1."""
    return rng.normal(0.0, 1.0, shape) / np.sqrt(shape[-1])


@dataclass
class TopicCatalog(Catalog):
    """A Catalog whose items also carry a latent topic and vector (never written out)."""

    topic: np.ndarray  # int64 [N] topic 0..T-1
    vec: np.ndarray  # float64 [N, d] unit latent vector
    topic_centre: np.ndarray  # float64 [T, d] unit
    topic_category: np.ndarray  # int64 [T, 2] primary and secondary category ids 1..C
    topic_pop: np.ndarray  # float64 [T] total popularity per topic
    by_topic: GroupSampler


def make_catalog(cfg: TopicsConfig, rng: np.random.Generator) -> TopicCatalog:
    n, n_a, n_c, n_t, d = cfg.n_items, cfg.n_authors, cfg.n_categories, cfg.n_topics, cfg.dim
    cat_centre = _unit(rng.normal(0.0, 1.0, (n_c, d)))
    cat_weight = rng.lognormal(0.0, 0.5, n_c)
    primary = np.concatenate([rng.permutation(n_c), rng.choice(n_c, n_t - n_c, p=cat_weight / cat_weight.sum())])
    secondary = (primary + rng.integers(1, n_c, n_t)) % n_c  # [T] any other category
    centre = _unit(cat_centre[primary] + 1.0 * _noise(rng, (n_t, d)))  # [T, d]
    topic_weight = rng.lognormal(0.0, 0.5, n_t)
    p_topic = topic_weight / topic_weight.sum()
    first = np.concatenate([rng.permutation(n_t), rng.choice(n_t, n_a - n_t, p=p_topic)])  # [A]
    second = rng.choice(n_t, n_a, p=p_topic)
    author_size = rng.lognormal(0.0, 1.0, n_a)
    author = rng.choice(n_a, n, p=author_size / author_size.sum())  # [N] 0-based
    topic = np.where(rng.random(n) < 0.7, first[author], second[author])
    u = rng.random(n)
    category = np.where(u < 0.6, primary[topic], np.where(u < 0.9, secondary[topic], rng.integers(0, n_c, n)))
    vec = _unit(centre[topic] + 0.25 * _noise(rng, (n, d)))  # [N, d]
    base = _finish_catalog(cfg, author.astype(np.int64) + 1, category.astype(np.int64) + 1, rng)
    return TopicCatalog(
        **{f.name: getattr(base, f.name) for f in fields(Catalog)},
        topic=topic.astype(np.int64), vec=vec, topic_centre=centre,
        topic_category=np.stack([primary, secondary], axis=1).astype(np.int64) + 1,
        topic_pop=np.bincount(topic, weights=base.pop, minlength=n_t),
        by_topic=GroupSampler(topic, base.pop, n_t),
    )


@dataclass
class TopicUsers(Users):
    """Users whose interests are latent regions; `cat` holds each interest topic's primary category
    (for analysis only: the affinity does not read it)."""

    topic: np.ndarray  # int64 [U, K] topic the interest is centred near
    centre: np.ndarray  # float64 [U, K, d] m_k, unit
    spread: np.ndarray  # float64 [U, K] s_k
    by_interest: GroupSampler  # groups row * K + k over the T topics: the browsing distribution


def _kernel(dots: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """r = exp(-||x - m||^2 / (2 s^2)) of unit vectors from their dot product x . m."""
    return np.exp((dots - 1.0) / spread**2)


def make_users(cfg: TopicsConfig, cat: TopicCatalog, ids: np.ndarray, rng: np.random.Generator) -> TopicUsers:
    u, kk, n_t = len(ids), MAX_INTERESTS, cfg.n_topics
    hist, t_start, t_end = _history(cfg, u, rng)
    n_int = np.minimum(1 + rng.poisson(3.0, u), kk)
    valid = np.arange(kk)[None, :] < n_int[:, None]  # [U, K]
    # K distinct topics per user by popularity: Gumbel top-k over log weights (empty topics never).
    with np.errstate(divide="ignore"):
        log_pop = np.log(cat.topic_pop)
    itopic = np.argsort(-(log_pop[None, :] + rng.gumbel(size=(u, n_t))), axis=1)[:, :kk]  # [U, K]
    centre = _unit(cat.topic_centre[itopic] + 0.15 * _noise(rng, (u, kk, cfg.dim)))  # [U, K, d]
    spread = rng.uniform(0.2, 0.3, (u, kk))
    fav_items = cat.by_topic.sample(np.repeat(itopic.ravel(), N_FAV_AUTHORS), rng.random(u * kk * N_FAV_AUTHORS))
    fav = cat.author[fav_items].reshape(u, kk, N_FAV_AUTHORS)
    w = rng.gamma(1.0, size=(u, kk)) * valid
    w /= w.sum(axis=1, keepdims=True)
    start, end = _lifetimes(cfg, valid, rng)
    browse = cat.topic_pop[None, None, :] * _kernel(centre @ cat.topic_centre.T, spread[..., None])  # [U, K, T]
    return TopicUsers(
        ids=ids, hist_len=hist, t_start=t_start, t_end=t_end,
        valid=valid, cat=cat.topic_category[itopic, 0], fav=fav, weight=w,
        gain=(0.5 + 0.5 * n_int[:, None] * w) * valid,
        p_author=rng.uniform(0.3, 0.7, (u, kk)), start=start, end=end, bias=rng.normal(0.0, 0.3, u),
        topic=itopic, centre=centre, spread=spread,
        by_interest=GroupSampler(np.repeat(np.arange(u * kk), n_t), browse.ravel(), u * kk),
    )


def affinity(users: TopicUsers, cat: TopicCatalog, row: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Latent affinity a(u, i) (module docstring) of user rows `row` [n] for item indices `item` [n]."""
    out = np.empty(len(row))
    for lo in range(0, len(row), AFFINITY_BLOCK):
        r, i = row[lo:lo + AFFINITY_BLOCK], item[lo:lo + AFFINITY_BLOCK]
        dots = np.matmul(users.centre[r], cat.vec[i][:, :, None])[:, :, 0]  # [n, K, d] @ [n, d, 1] -> [n, K]
        author_match = (cat.author[i][:, None, None] == users.fav[r]).any(axis=2)  # [n, K]
        near = _kernel(dots, users.spread[r])  # [n, K] r_k(x_i)
        out[lo:lo + AFFINITY_BLOCK] = (users.gain[r] * near * (1.0 + author_match)).sum(axis=1)
    return out


def _region_item(users: TopicUsers, cat: TopicCatalog, row: np.ndarray, k: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """One item near interest k per user row: a topic by popularity x appeal, then an item of it."""
    flat = users.by_interest.sample(row * users.topic.shape[1] + k, rng.random(len(row)))  # into [U * K * T]
    return cat.by_topic.sample(flat % len(cat.topic_pop), rng.random(len(row)))


def _interest_target(users: TopicUsers, cat: TopicCatalog, row: np.ndarray, k: np.ndarray,
                     rng: np.random.Generator, family: Family) -> np.ndarray:
    """A target of interest k: retrieved by its category (with probability P_CATEGORY_TARGET: the
    category of an item of the interest's topic, then an item of that category by popularity), else
    drawn like a behavior."""
    n = len(row)
    by_cat = rng.random(n) < P_CATEGORY_TARGET
    out = np.empty(n, dtype=np.int64)
    out[~by_cat] = _item_from_interest(users, cat, row[~by_cat], k[~by_cat], rng, family)
    seen = cat.by_topic.sample(users.topic[row[by_cat], k[by_cat]], rng.random(by_cat.sum()))
    out[by_cat] = cat.by_category.sample(cat.category[seen], rng.random(len(seen)))
    return out


TOPICS = Family("topics", make_catalog, make_users, affinity, _region_item, _interest_target)


def generate(cfg: TopicsConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Write a `topics` data set to `out_dir` (docs/contracts.md format); returns the `meta` dict."""
    return _generate(cfg, out_dir, progress, family=TOPICS)
