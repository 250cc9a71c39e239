"""Report parsing, server-side deltas/quantiles and the gate, on fixture files generated here.

The locust CSV fixtures use locust 2.x's exact column layout (test_loadtest_run.py checks the
readers against a real locust run); the /metrics fixtures are written by prometheus_client itself.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtest import report
from loadtest.locust_csv import read_history, read_stats
from loadtest.prom import delta, histogram_quantile, parse_metrics
from loadtest.traffic import EVENTS_NAME, SCORE_NAME

PCTS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
STATS_COLS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
              "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s", *PCTS]
HISTORY_COLS = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PCTS,
                "Total Request Count", "Total Failure Count", "Total Median Response Time",
                "Total Average Response Time", "Total Min Response Time", "Total Max Response Time",
                "Total Average Content Size"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pcts(p50: float, p95: float, p99: float) -> list[float]:
    return [p50, p50, p50, p95, p95, p95, p99, p99, p99, p99, p99]


def write_locust_csvs(prefix: Path, score_p99: float, score_failures: int = 0, seconds: int = 5) -> None:
    """A run of `seconds` seconds: 100 req/s score + 10 req/s events."""
    n_score, n_events = 100 * seconds, 10 * seconds
    rows = [
        ["POST", SCORE_NAME, n_score, score_failures, 10, 11.5, 4, score_p99 + 5, 120, 100.0, score_failures / seconds,
         *_pcts(10, 20, score_p99)],
        ["POST", EVENTS_NAME, n_events, 0, 3, 3.2, 1, 9, 14, 10.0, 0.0, *_pcts(3, 6, 8)],
        ["", "Aggregated", n_score + n_events, score_failures, 9, 10.8, 1, score_p99 + 5, 110, 110.0,
         score_failures / seconds, *_pcts(9, 19, score_p99)],
    ]
    with open(f"{prefix}_stats.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STATS_COLS)
        w.writerows(rows)
    with open(f"{prefix}_stats_history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HISTORY_COLS)
        w.writerow([1764400000, 0, "POST", SCORE_NAME, "0.000000", "0.000000", *["N/A"] * len(PCTS),
                    0, 0, 0, 0, 0, 0, 0])  # locust's first row, before any answer
        for t in range(1, seconds + 1):
            ts = 1764400000 + t
            for name, rps, p in ((SCORE_NAME, 100, _pcts(10, 20, score_p99)), ("Aggregated", 110, _pcts(9, 19, score_p99))):
                w.writerow([ts, 4, "POST" if name != "Aggregated" else "", name, f"{rps:.6f}", "0.000000", *p,
                            rps * t, 0, 10, 11.0, 1, score_p99 + 5, 110])
    with open(f"{prefix}_failures.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"])
        if score_failures:
            w.writerow(["POST", SCORE_NAME, "HTTP 503: not ready", score_failures, "", ""])


def metrics_pair() -> tuple[str, str]:
    """/metrics text before and after a 'run': the run adds 90 gsu observations of 3 ms and 10 of 15 ms,
    80 cache hits and 20 misses. Observations before the run (80 ms, a cold start) must not count."""
    reg = CollectorRegistry()
    lat = Histogram("twin_request_latency_seconds", "stage latency", ["stage"], registry=reg,
                    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1))
    batch = Histogram("twin_batch_size", "per model call", ["unit"], registry=reg, buckets=(1, 2, 4, 8, 16))
    codes = Counter("twin_requests", "requests", ["endpoint", "code"], registry=reg)
    hits = Counter("twin_cache_hits", "hits", registry=reg)
    misses = Counter("twin_cache_misses", "misses", registry=reg)
    Counter("twin_degraded", "degraded", ["reason"], registry=reg).labels(reason="redis").inc(0)
    for _ in range(50):
        lat.labels(stage="gsu").observe(0.08)
    hits.inc(1000)
    batch.labels(unit="requests").observe(16)
    codes.labels(endpoint="/v1/score", code="200").inc(7)
    before = generate_latest(reg).decode()
    for _ in range(90):
        lat.labels(stage="gsu").observe(0.003)
    for _ in range(10):
        lat.labels(stage="gsu").observe(0.015)
    for _ in range(4):
        batch.labels(unit="requests").observe(3)
        batch.labels(unit="candidates").observe(300)
    codes.labels(endpoint="/v1/score", code="200").inc(98)
    codes.labels(endpoint="/v1/score", code="429").inc(2)
    hits.inc(80)
    misses.inc(20)
    return before, generate_latest(reg).decode()


def test_histogram_quantile_interpolates_inside_the_bucket_like_promql():
    buckets = {0.001: 0, 0.005: 90, 0.01: 90, 0.02: 100, math.inf: 100}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001 + 0.004 * 50 / 90)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.01 * 9 / 10)
    # ranks that land in +Inf report the largest finite bound; an empty histogram has no quantile
    assert histogram_quantile(0.99, {0.01: 10, math.inf: 100}) == 0.01
    assert histogram_quantile(0.5, {0.01: 0, math.inf: 0}) is None
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, buckets)


def test_server_stats_count_only_the_run():
    before, after = metrics_pair()
    s = report.server_stats([parse_metrics(before)], [parse_metrics(after)])
    gsu = next(st for st in s.stages if st.stage == "gsu")
    assert gsu.count == 100
    assert gsu.mean_ms == pytest.approx((90 * 3 + 10 * 15) / 100)
    assert gsu.p50_ms == pytest.approx(1000 * (0.001 + 0.004 * 50 / 90))
    assert gsu.p99_ms == pytest.approx(19.0)
    assert next(st for st in s.stages if st.stage == "esu").count == 0
    assert s.cache_hit_rate == pytest.approx(0.8)
    assert s.batch["requests"][0] == pytest.approx(3.0)
    assert s.batch["candidates"][0] == pytest.approx(300.0)
    assert s.responses == {"/v1/score 200": 98, "/v1/score 429": 2}
    assert s.counters["degraded"] == 0


def test_two_replicas_sum_and_a_restarted_replica_counts_from_zero():
    before, after = metrics_pair()
    # replica 2 restarted during the run: its counters went down, so everything it shows is the run's
    fresh = parse_metrics(after)
    restarted_before = parse_metrics(before)
    restarted_before.samples = {k: v * 10 for k, v in restarted_before.samples.items()}
    d = delta(restarted_before, fresh)
    assert d.total("twin_cache_hits_total") == fresh.total("twin_cache_hits_total")
    s = report.server_stats([parse_metrics(before), parse_metrics(before)], [parse_metrics(after)] * 2)
    assert next(st for st in s.stages if st.stage == "gsu").count == 200
    assert s.replicas == 2
    with pytest.raises(ValueError, match="one before and one after"):
        report.server_stats([parse_metrics(before)], [])


def test_readers_parse_locust_layout(tmp_path):
    write_locust_csvs(tmp_path / "locust", score_p99=25)
    stats = read_stats(tmp_path / "locust")
    assert stats[SCORE_NAME].requests == 500 and stats[SCORE_NAME].pct("99%") == 25
    assert stats["Aggregated"].requests == 550
    hist = read_history(tmp_path / "locust", SCORE_NAME)
    assert len(hist) == 6 and hist[0].p99_ms is None and hist[-1].p99_ms == 25
    with pytest.raises(ValueError, match="percentile"):
        stats[SCORE_NAME].pct("42%")
    with pytest.raises(FileNotFoundError, match="nope_stats.csv"):
        read_stats(tmp_path / "nope")


def _run_report(tmp_path: Path, p99: float, failures: int = 0, budget: float = 30) -> tuple[int, Path]:
    out = tmp_path / "out"
    write_locust_csvs(tmp_path / "locust", score_p99=p99, score_failures=failures)
    before, after = metrics_pair()
    (tmp_path / "b.prom").write_text(before)
    (tmp_path / "a.prom").write_text(after)
    rc = report.main(["--csv-prefix", str(tmp_path / "locust"), "--budget-ms", str(budget), "--out", str(out),
                      "--metrics-before", str(tmp_path / "b.prom"), "--metrics-after", str(tmp_path / "a.prom"),
                      "--workload", "W1"])
    return rc, out


def test_gate_passes_within_budget_and_writes_report_and_plots(tmp_path):
    rc, out = _run_report(tmp_path, p99=25)
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "## Gate: PASS" in md
    assert "| gsu | 100 | 4.20 |" in md  # server stage row: count and mean ms
    assert "hit rate 80.0%" in md
    for name in ("latency.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gate"]["passed"] is True
    assert summary["server"]["cache_hit_rate"] == pytest.approx(0.8)


def test_gate_fails_when_p99_is_over_budget(tmp_path):
    rc, out = _run_report(tmp_path, p99=31, budget=30)
    assert rc == 1
    md = (out / "report.md").read_text()
    assert "## Gate: FAIL" in md and "p99 31.0 ms > budget 30 ms" in md


def test_gate_fails_on_any_failed_request(tmp_path):
    rc, out = _run_report(tmp_path, p99=10, failures=1)
    assert rc == 1
    md = (out / "report.md").read_text()
    assert "1 of 550 requests failed" in md and "HTTP 503: not ready" in md


def test_gate_fails_when_no_score_request_succeeded(tmp_path):
    write_locust_csvs(tmp_path / "locust", score_p99=10)
    stats = read_stats(tmp_path / "locust")
    del stats[SCORE_NAME]
    result = report.gate(stats, budget_ms=30)
    assert not result.passed and "no successful POST /v1/score" in result.reasons[0]
    # a crashing locustfile fails the gate even when every request that was sent succeeded
    stats = read_stats(tmp_path / "locust")
    assert report.gate(stats, budget_ms=30).passed
    broken = report.gate(stats, budget_ms=30, user_exceptions=3)
    assert not broken.passed and "raised 3 exception" in broken.reasons[0]
    with pytest.raises(ValueError, match="budget_ms"):
        report.gate(stats, budget_ms=0)


def test_ratio_gate_fails_a_2x_regression_that_the_absolute_budget_lets_through(tmp_path):
    from loadtest.baseline import Baseline

    write_locust_csvs(tmp_path / "locust", score_p99=40)  # 40 ms: far inside a 650 ms smoke budget
    stats = read_stats(tmp_path / "locust")
    bounds = {"http_p99_over_forward_p99": 3.0, "forward_over_floor": 4.0}
    healthy = Baseline(seq_len=1000, candidates=100, forward_p50_ms=5.0, forward_p99_ms=20.0, floor_p50_ms=2.0, calls=30,
                       forward_over_floor=2.5)
    assert report.gate(stats, budget_ms=650, baseline=healthy, bounds=bounds).passed  # 2.0 and 2.5
    slow_serving = Baseline(**{**healthy.to_dict(), "forward_p99_ms": 10.0})  # HTTP adds 2x what it did
    r = report.gate(stats, budget_ms=650, baseline=slow_serving, bounds=bounds)
    assert not r.passed and "http_p99_over_forward_p99 = 4.00 > bound 3" in r.reasons[0]
    slow_model = Baseline(**{**healthy.to_dict(), "forward_p50_ms": 10.0, "forward_over_floor": 5.0})  # forward 2x slower
    r = report.gate(stats, budget_ms=650, baseline=slow_model, bounds=bounds)
    assert not r.passed and "forward_over_floor = 5.00 > bound 4" in r.reasons[0]
    assert report.gate(stats, budget_ms=650, baseline=slow_model).passed  # no bounds asked: no ratio gate


def test_baseline_measures_the_active_models_forward_and_its_floor(tmp_path):
    from loadtest.baseline import measure
    from model_store.registry import ModelRegistry
    from tests.twin_factory import tiny_model

    reg = ModelRegistry(tmp_path / "models")
    reg.activate(reg.publish(tiny_model(), metrics={}, data_fingerprint="baseline-test"))
    b = measure(tmp_path / "models", candidates=20, rounds=2, per_round=2)
    assert (b.seq_len, b.candidates, b.calls) == (300, 20, 4)  # the tiny model's max_len
    assert 0 < b.floor_p50_ms and 0 < b.forward_p50_ms <= b.forward_p99_ms and b.forward_over_floor > 0
