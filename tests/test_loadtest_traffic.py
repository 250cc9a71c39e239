"""Traffic model of the locustfile: Zipf skew, candidate counts, unique event ids, contract shapes."""
from __future__ import annotations

import numpy as np
import pytest

from loadtest.profiles import PROFILES, get_profile
from loadtest.traffic import TrafficConfig, TrafficGenerator, ZipfSampler, candidate_count


def test_zipf_sampler_matches_the_power_law():
    s = ZipfSampler(1000, 1.1, np.random.default_rng(0))
    draws = s.sample(200_000)
    assert draws.min() >= 0 and draws.max() < 1000
    freq = np.bincount(draws, minlength=1000) / len(draws)
    # P(0)/P(9) = 10^1.1 under Zipf(1.1); the head holds most of the mass
    assert freq[0] / freq[9] == pytest.approx(10 ** 1.1, rel=0.1)
    h = 1.0 / np.arange(1, 1001) ** 1.1
    assert freq[0] == pytest.approx(h[0] / h.sum(), rel=0.03)
    uniform = ZipfSampler(10, 0.0, np.random.default_rng(0)).sample(50_000)
    assert np.bincount(uniform).min() > 4500  # s = 0 is uniform


def test_distinct_sampling_and_bad_arguments():
    s = ZipfSampler(600, 1.1, np.random.default_rng(1))
    ids = s.sample_distinct(500)  # most of a small catalog: forces many redraws
    assert len(set(ids.tolist())) == 500
    with pytest.raises(ValueError, match="distinct"):
        s.sample_distinct(601)
    with pytest.raises(ValueError, match="n >= 1"):
        ZipfSampler(0, 1.1, np.random.default_rng())
    with pytest.raises(ValueError, match="exponent"):
        ZipfSampler(10, -1, np.random.default_rng())


def test_candidate_counts_center_on_the_profile_and_respect_the_cap():
    rng = np.random.default_rng(2)
    counts = np.array([candidate_count(rng, 500, 1000) for _ in range(5000)])
    assert counts.mean() == pytest.approx(500, rel=0.02)
    assert 80 < counts.std() < 120  # sd = mean / 5
    assert counts.min() >= 1 and counts.max() <= 1000
    assert max(candidate_count(rng, 100, 110) for _ in range(1000)) == 110


def test_score_and_event_bodies_follow_the_api_contract():
    cfg = TrafficConfig(profile=get_profile("w3"), n_users=50, n_items=5000)
    gen = TrafficGenerator(cfg, seed=3)
    body = gen.score_body()
    items = [c["item_id"] for c in body["candidates"]]
    assert 0 <= body["user_id"] < 50 and len(set(items)) == len(items) > 200
    assert all(0 <= i < 5000 and isinstance(i, int) for i in items)
    ids = [e["event_id"] for _ in range(50) for e in gen.events_body()["events"]]
    other = TrafficGenerator(cfg, seed=3)  # same seed, another generator: ids must still differ
    ids += [e["event_id"] for e in other.events_body()["events"]]
    assert len(ids) == len(set(ids)) == 255
    ev = gen.events_body()["events"][0]
    assert set(ev) == {"event_id", "user_id", "item_id", "ts", "cross"}
    assert set(ev["cross"]) == {"play_ratio", "liked"} and ev["cross"]["liked"] in (0.0, 1.0)
    # a catalog smaller than the profile's count caps the request at the catalog
    small = TrafficGenerator(TrafficConfig(profile=PROFILES["W3"], n_users=5, n_items=40), seed=4)
    assert len(small.score_body()["candidates"]) == 40


def test_world_users_move_without_moving_the_items():
    cfg = TrafficConfig(profile=PROFILES["W1"], n_users=200, n_items=300, first_user_id=1_000_001)
    gen = TrafficGenerator(cfg, seed=5)
    bodies = [gen.score_body() for _ in range(200)]
    users = {b["user_id"] for b in bodies} | {e["user_id"] for _ in range(50) for e in gen.events_body()["events"]}
    items = {c["item_id"] for b in bodies for c in b["candidates"]}
    assert min(users) >= 1_000_001 and max(users) <= 1_000_200
    assert min(items) >= 1 and max(items) <= 300  # items keep the demo offset 1
    assert TrafficConfig(profile=PROFILES["W1"], n_users=5, n_items=5, id_offset=3).user_offset == 3


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match=r"'W9'.*W1"):
        get_profile("W9")
