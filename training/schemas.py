"""Feature schemas of the two data sets the project trains on (synthetic lifelong and MovieLens)."""
from __future__ import annotations

from twin.config import FeatureSchema, FeatureSpec

# Time since the behavior, in hours: 1h, 6h, 1d, 3d, 1w, 1mo, 3mo, 6mo, 1y, 2y.
AGE_HOURS_BOUNDARIES = (1.0, 6.0, 24.0, 72.0, 168.0, 720.0, 2160.0, 4320.0, 8760.0, 17520.0)
# log2 buckets of the history length, 1 .. 2^17.
HIST_LEN_BOUNDARIES = tuple(float(2**i) for i in range(18))
DURATION_S_BOUNDARIES = (5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
PLAY_RATIO_BOUNDARIES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
# log2 buckets of a count (an item's views or ratings), 1 .. 2^20.
COUNT_BOUNDARIES = tuple(float(2**i) for i in range(21))
# Inherent features that are statistics of the behavior log rather than properties of the item
# (the "no_item_stats" ablation drops them).
ITEM_STAT_FEATURES = ("views", "n_ratings", "mean_rating")


def _context() -> tuple[FeatureSpec, ...]:
    return (
        FeatureSpec("hour", vocab=24, dim=8),
        FeatureSpec("hist_len", vocab=len(HIST_LEN_BOUNDARIES) + 1, dim=8, boundaries=HIST_LEN_BOUNDARIES),
    )


def _count(name: str) -> FeatureSpec:
    return FeatureSpec(name, vocab=len(COUNT_BOUNDARIES) + 1, dim=8, boundaries=COUNT_BOUNDARIES)


def _age() -> FeatureSpec:
    return FeatureSpec("age_hours", vocab=len(AGE_HOURS_BOUNDARIES) + 1, dim=8,
                       boundaries=AGE_HOURS_BOUNDARIES, source="age_hours")


def synthetic_schema(n_items: int, n_authors: int, n_categories: int, id_dim: int = 64) -> FeatureSchema:
    """Short-video-like items (the paper's setting): id, author, category, duration, and views (how
    many behaviors are of the item: its observable popularity); cross features: age of the behavior,
    completion ratio, like flag."""
    return FeatureSchema(
        inherent=(
            FeatureSpec("item_id", vocab=n_items, dim=id_dim),
            FeatureSpec("author_id", vocab=n_authors, dim=id_dim),
            # 32, not 8: alpha is a bilinear form of these embeddings, and 8 dimensions cannot hold 50-100
            # categories apart (ci preset, max_len 1,500: validation AUC 0.821 at epoch 1 vs 0.802 with 8).
            FeatureSpec("category", vocab=n_categories, dim=32),
            FeatureSpec("duration_s", vocab=len(DURATION_S_BOUNDARIES) + 1, dim=8, boundaries=DURATION_S_BOUNDARIES),
            _count("views"),
        ),
        cross=(
            _age(),
            FeatureSpec("play_ratio", vocab=len(PLAY_RATIO_BOUNDARIES) + 1, dim=8, boundaries=PLAY_RATIO_BOUNDARIES),
            FeatureSpec("liked", vocab=2, dim=8),
        ),
        context=_context(),
    )


YEAR_BOUNDARIES = tuple(float(y) for y in range(1930, 2021, 10))
RATING_BOUNDARIES = (1.0, 2.0, 3.0, 3.5, 4.0, 4.5)
# an item's mean rating x 10 (raw values are integers; 0 = no rating to average)
MEAN_RATING_X10_BOUNDARIES = (1.0, 20.0, 25.0, 30.0, 33.0, 35.0, 37.0, 39.0, 41.0, 43.0, 45.0)


def movielens_schema(n_items: int, n_genres: int, id_dim: int = 64) -> FeatureSchema:
    """MovieLens mapping from the data README: movie (dense index), primary genre, release year, and
    two statistics of the movie's ratings (count, mean x 10; training.movielens says which ratings);
    cross features: age of the rating, the rating itself, whether the user tagged the movie."""
    return FeatureSchema(
        inherent=(
            FeatureSpec("item_id", vocab=n_items, dim=id_dim),
            FeatureSpec("genre", vocab=n_genres, dim=8),
            FeatureSpec("year", vocab=len(YEAR_BOUNDARIES) + 1, dim=8, boundaries=YEAR_BOUNDARIES),
            _count("n_ratings"),
            FeatureSpec("mean_rating", vocab=len(MEAN_RATING_X10_BOUNDARIES) + 1, dim=8,
                        boundaries=MEAN_RATING_X10_BOUNDARIES),
        ),
        cross=(
            _age(),
            FeatureSpec("rating", vocab=len(RATING_BOUNDARIES) + 1, dim=8, boundaries=RATING_BOUNDARIES),
            FeatureSpec("tagged", vocab=2, dim=8),
        ),
        context=_context(),
    )
