"""Locust scenario for the TWIN scoring service (DESIGN.md sec. 4 workloads, sec. 6 API).

Each simulated user loops: with probability --event-ratio it posts a batch of fresh behaviors to
/v1/events, otherwise it scores a Zipf-drawn user against a Zipf-drawn candidate list. Any non-2xx
answer, or a 2xx whose body does not match the contract, is a failure.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        --workload W1 --n-users 1000 --n-items 10000 -u 16 -r 8 -t 60s

Every option below also reads an environment variable (named in its help), so docker-compose
and scripts can set them once for master and workers.
"""
from __future__ import annotations

import csv
import logging
import random

import numpy as np
from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from loadtest.profiles import PROFILES, get_profile
from loadtest.traffic import EVENTS_NAME, SCORE_NAME, TrafficConfig, TrafficGenerator

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    g = parser.add_argument_group("TWIN workload")
    g.add_argument("--workload", default="W1", env_var="TWIN_LOADTEST_WORKLOAD",
                   help=f"workload profile, one of {sorted(PROFILES)} (env TWIN_LOADTEST_WORKLOAD)")
    g.add_argument("--n-users", type=int, default=600, env_var="TWIN_DEMO_USERS",
                   help="how many demo users service.bootstrap printed (env TWIN_DEMO_USERS)")
    g.add_argument("--n-items", type=int, default=20_000, env_var="TWIN_DEMO_ITEMS",
                   help="how many demo items service.bootstrap printed (env TWIN_DEMO_ITEMS)")
    g.add_argument("--id-offset", type=int, default=1, env_var="TWIN_DEMO_FIRST_ID",
                   help="first demo user/item id; ids are OFFSET..OFFSET+N-1 (env TWIN_DEMO_FIRST_ID)")
    g.add_argument("--first-user-id", type=int, default=None, env_var="TWIN_DEMO_FIRST_USER",
                   help="first user id when users live elsewhere than items, e.g. a load-test world's "
                        "(service.bootstrap --world); default --id-offset (env TWIN_DEMO_FIRST_USER)")
    g.add_argument("--event-ratio", type=float, default=0.1, env_var="TWIN_LOADTEST_EVENT_RATIO",
                   help="share of requests that are POST /v1/events (env TWIN_LOADTEST_EVENT_RATIO)")
    g.add_argument("--zipf-users", type=float, default=1.1, env_var="TWIN_LOADTEST_ZIPF_USERS",
                   help="Zipf exponent of user popularity (env TWIN_LOADTEST_ZIPF_USERS)")
    g.add_argument("--zipf-items", type=float, default=1.1, env_var="TWIN_LOADTEST_ZIPF_ITEMS",
                   help="Zipf exponent of item popularity (env TWIN_LOADTEST_ZIPF_ITEMS)")
    g.add_argument("--think-ms", type=float, default=0.0, env_var="TWIN_LOADTEST_THINK_MS",
                   help="mean exponential pause between a user's requests; 0 = closed loop (env TWIN_LOADTEST_THINK_MS)")
    g.add_argument("--event-cross", default="play_ratio,liked", env_var="TWIN_LOADTEST_EVENT_CROSS",
                   help="stored cross features of the active schema, comma-separated (env TWIN_LOADTEST_EVENT_CROSS)")


def _traffic_config(opts) -> TrafficConfig:
    if not 0.0 <= opts.event_ratio <= 1.0:
        raise ValueError(f"--event-ratio must be in [0, 1], got {opts.event_ratio}")
    return TrafficConfig(
        profile=get_profile(opts.workload),
        n_users=opts.n_users,
        n_items=opts.n_items,
        id_offset=opts.id_offset,
        first_user_id=opts.first_user_id,
        zipf_users=opts.zipf_users,
        zipf_items=opts.zipf_items,
        cross_names=tuple(n.strip() for n in opts.event_cross.split(",") if n.strip()),
    )


@events.test_start.add_listener
def _check_options(environment, **_kw) -> None:
    # fail at start with the option's name rather than inside every user
    if environment.parsed_options is not None:
        cfg = _traffic_config(environment.parsed_options)
        log.info("workload %s (%s), users %d..%d, %d items", cfg.profile.name, cfg.profile.description,
                 cfg.user_offset, cfg.user_offset + cfg.n_users - 1, cfg.n_items)


@events.quitting.add_listener
def _write_final_csv(environment, **_kw) -> None:
    """Final totals. locust refreshes PREFIX_stats.csv once a second and not at exit, so it misses
    the last second; the report reads these files instead (loadtest.locust_csv)."""
    opts = environment.parsed_options
    if opts is None or not opts.csv_prefix or isinstance(environment.runner, WorkerRunner):
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    with open(f"{opts.csv_prefix}_final_stats.csv", "w", newline="") as f:
        writer.requests_csv(csv.writer(f))
    with open(f"{opts.csv_prefix}_final_failures.csv", "w", newline="") as f:
        writer.failures_csv(csv.writer(f))
    with open(f"{opts.csv_prefix}_final_exceptions.csv", "w", newline="") as f:
        writer.exceptions_csv(csv.writer(f))


class ScoringUser(FastHttpUser):
    # network timeouts well above any sane budget: a slow answer must show up as latency, not vanish
    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        # built per user (not at import): workers get the master's options only with the spawn message
        opts = self.environment.parsed_options
        self.cfg = _traffic_config(opts)
        self.think_s = max(opts.think_ms, 0.0) / 1000.0
        self.event_ratio = opts.event_ratio
        self.gen = TrafficGenerator(self.cfg, seed=random.getrandbits(63))
        self.coin = np.random.default_rng(random.getrandbits(63))

    def wait_time(self) -> float:
        # exponential pauses make each user a Poisson source at rate 1/think
        return float(self.coin.exponential(self.think_s)) if self.think_s > 0 else 0.0

    @task
    def step(self) -> None:
        if self.coin.random() < self.event_ratio:
            self._post_events()
        else:
            self._score()

    def _score(self) -> None:
        body = self.gen.score_body()
        n = len(body["candidates"])
        self._post("/v1/score", SCORE_NAME, body, "scores",
                   lambda scores: None if len(scores) == n else f"{len(scores)} scores for {n} candidates")

    def _post_events(self) -> None:
        body = self.gen.events_body()
        n = len(body["events"])  # every event id is fresh, so all must be new
        self._post("/v1/events", EVENTS_NAME, body, "accepted",
                   lambda accepted: None if accepted == n else f"accepted={accepted} for {n} fresh events")

    def _post(self, path: str, name: str, body: dict, field: str, check) -> None:
        """POST; a non-2xx, a body without `field`, or check(body[field]) returning a message is a
        failure (decided inside the catch_response block, before locust records the request)."""
        with self.client.post(path, json=body, name=name, catch_response=True) as resp:
            if not 200 <= resp.status_code < 300:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                value = resp.json()[field]
            except (ValueError, KeyError, TypeError) as e:
                resp.failure(f"bad {field} body: {e!r}")
                return
            problem = check(value)
            if problem:
                resp.failure(problem)
