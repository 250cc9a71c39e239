"""Request bodies with realistic skew: Zipf-popular users and items, a spread of candidate counts.

Popularity rank r (0 = most popular) maps to id `id_offset + r`: the demo data (service.bootstrap,
training.synthetic) numbers users 1..N and items 1..M (0 is padding), hence the default offset 1.
A load-test world (`python -m service.bootstrap --world W1`) puts its users elsewhere (e.g.
1,000,001..): `first_user_id` moves the users' range without moving the items'.
The load test's item popularity need not match the catalog's own (a random permutation there); it
shapes what the service's caches see. Pure numpy, no I/O, so the locustfile stays thin and this
part is unit-tested.
"""
from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.profiles import Profile

# locust stat names of the two endpoints (the report gates on SCORE_NAME)
SCORE_NAME = "POST /v1/score"
EVENTS_NAME = "POST /v1/events"


class ZipfSampler:
    """Draws ids in [0, n) with P(id = r) proportional to 1 / (r + 1)^s (bounded Zipf).

    numpy's `zipf` is unbounded and needs s > 1; an explicit CDF over n ranks works for any s >= 0
    (s = 0 is uniform) and costs 8 bytes per id (8 MB for the 1M-item benchmark catalog).
    """

    def __init__(self, n: int, s: float, rng: np.random.Generator) -> None:
        if n < 1:
            raise ValueError(f"ZipfSampler needs n >= 1, got {n}")
        if s < 0:
            raise ValueError(f"ZipfSampler needs exponent s >= 0, got {s}")
        self.n = n
        self.s = s
        self._rng = rng
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s  # [n]
        cdf = np.cumsum(weights)
        self._cdf = cdf / cdf[-1]  # [n], last == 1.0

    def sample(self, size: int) -> np.ndarray:
        u = self._rng.random(size)  # [size] in [0, 1)
        return np.searchsorted(self._cdf, u, side="right").astype(np.int64)  # [size] in [0, n)

    def sample_distinct(self, size: int) -> np.ndarray:
        """`size` distinct ids, popular ones more likely (a ranking request has no duplicates)."""
        if size > self.n:
            raise ValueError(f"cannot draw {size} distinct ids from a catalog of {self.n}")
        picked: dict[int, None] = {}  # insertion-ordered set
        while len(picked) < size:
            for i in self.sample(2 * (size - len(picked))).tolist():
                picked.setdefault(i, None)
                if len(picked) == size:
                    break
        return np.fromiter(picked, dtype=np.int64, count=size)


def candidate_count(rng: np.random.Generator, mean: int, cap: int) -> int:
    """Candidates per request: normal around the profile's mean (sd = mean/5), clipped to [1, cap]."""
    if mean < 1 or cap < 1:
        raise ValueError(f"candidate mean and cap must be >= 1, got mean={mean}, cap={cap}")
    return int(np.clip(round(rng.normal(mean, mean / 5)), 1, cap))


@dataclass(frozen=True)
class TrafficConfig:
    profile: Profile
    n_users: int
    n_items: int
    zipf_users: float = 1.1
    zipf_items: float = 1.1
    id_offset: int = 1  # first demo id (items, and users unless first_user_id is set)
    first_user_id: int | None = None  # first user id of a load-test world; None -> id_offset
    events_per_batch: int = 5
    # stored cross features of the active model's schema (synthetic demo: play_ratio, liked)
    cross_names: tuple[str, ...] = ("play_ratio", "liked")


    @property
    def user_offset(self) -> int:
        return self.id_offset if self.first_user_id is None else self.first_user_id


class TrafficGenerator:
    """Builds /v1/score and /v1/events bodies (DESIGN.md sec. 6). One per locust user."""

    _run_tag = uuid.uuid4().hex[:8]  # one per process, so event ids stay unique across workers

    def __init__(self, cfg: TrafficConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        self._rng = np.random.default_rng(seed)
        self._users = ZipfSampler(cfg.n_users, cfg.zipf_users, self._rng)
        self._items = ZipfSampler(cfg.n_items, cfg.zipf_items, self._rng)
        self._event_seq = itertools.count()
        self._tag = f"lt-{self._run_tag}-{os.getpid()}-{id(self):x}"

    def score_body(self) -> dict[str, Any]:
        p = self.cfg.profile
        n = min(candidate_count(self._rng, p.candidates, p.candidates_max), self.cfg.n_items)
        items = self._items.sample_distinct(n) + self.cfg.id_offset
        return {
            "user_id": int(self._users.sample(1)[0]) + self.cfg.user_offset,
            "candidates": [{"item_id": int(i)} for i in items],
        }

    def events_body(self) -> dict[str, Any]:
        """A batch of fresh behaviors with ids unique across the run (the endpoint is idempotent by id)."""
        now_ms = int(time.time() * 1000)
        users = self._users.sample(self.cfg.events_per_batch) + self.cfg.user_offset
        items = self._items.sample(self.cfg.events_per_batch) + self.cfg.id_offset
        events = [
            {
                "event_id": f"{self._tag}-{next(self._event_seq)}",
                "user_id": int(u),
                "item_id": int(i),
                "ts": now_ms,
                "cross": {name: self._cross_value(name) for name in self.cfg.cross_names},
            }
            for u, i in zip(users, items)
        ]
        return {"events": events}

    def _cross_value(self, name: str) -> float:
        # ratios are continuous in [0, 1]; anything else is treated as an interaction flag
        if name.endswith("ratio"):
            return round(float(self._rng.random()), 3)
        return float(self._rng.random() < 0.2)
