"""loadtest.run end to end: real locust (subprocess) against a small in-process HTTP server that
speaks the API contract (DESIGN.md sec. 6) and exports real prometheus_client metrics; plus the
target checks that keep the tool on loopback.

The server stands in for the service only to test the load-test tooling (CSV layout, metrics
deltas, gate); runs against the real service are in docs/loadtest.md.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter as Tally
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtest import run
from loadtest.locust_csv import read_stats
from loadtest.traffic import EVENTS_NAME, SCORE_NAME


class ContractServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fail_every: int = 0, short_every: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), ContractHandler)
        self.fail_every = fail_every  # answer 503 to every n-th score request (0 = never)
        self.short_every = short_every  # answer 200 with one score too few to every n-th (0 = never)
        self.lock = threading.Lock()
        self.n_score = 0
        self.event_ids: Tally[str] = Tally()
        self.cand_counts: list[int] = []
        self.user_ids: set[int] = set()  # users seen by both endpoints
        self.item_ids: set[int] = set()
        self.reg = CollectorRegistry()
        self.lat = Histogram("twin_request_latency_seconds", "", ["stage"], registry=self.reg)
        self.hits = Counter("twin_cache_hits", "", registry=self.reg)
        self.misses = Counter("twin_cache_misses", "", registry=self.reg)


class ContractHandler(BaseHTTPRequestHandler):
    server: ContractServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: dict | bytes, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health/ready":
            self._send(200, {"ready": True})
        elif self.path == "/metrics":
            self._send(200, generate_latest(self.server.reg), "text/plain; version=0.0.4")
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self) -> None:
        t0 = time.perf_counter()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s = self.server
        if self.path == "/v1/score":
            items = [c["item_id"] for c in body["candidates"]]
            assert isinstance(body["user_id"], int) and len(set(items)) == len(items)
            with s.lock:
                s.n_score += 1
                n = s.n_score
                s.cand_counts.append(len(items))
                s.user_ids.add(body["user_id"])
                s.item_ids.update(items)
            if s.fail_every and n % s.fail_every == 0:
                self._send(503, {"detail": "shedding"})
                return
            s.hits.inc(len(items) - 1)
            s.misses.inc(1)
            s.lat.labels(stage="total").observe(time.perf_counter() - t0)
            short = bool(s.short_every and n % s.short_every == 0)
            self._send(200, {"model_version": "test", "scores": [0.5] * (len(items) - short), "degraded": False})
        elif self.path == "/v1/events":
            with s.lock:
                s.event_ids.update(e["event_id"] for e in body["events"])
                s.user_ids.update(e["user_id"] for e in body["events"])
                s.item_ids.update(e["item_id"] for e in body["events"])
            self._send(200, {"accepted": len(body["events"])})
        else:
            self._send(404, {"detail": "not found"})


@pytest.fixture
def server_factory():
    servers = []

    def start(fail_every: int = 0, short_every: int = 0) -> ContractServer:
        srv = ContractServer(fail_every, short_every)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _args(srv: ContractServer, out, budget_ms: float = 1000) -> list[str]:
    return ["--host", f"http://127.0.0.1:{srv.server_address[1]}", "--profile", "W1", "--users", "4",
            "--spawn-rate", "4", "--run-time", "4s", "--budget-ms", str(budget_ms), "--out", str(out),
            "--n-users", "50", "--n-items", "500", "--event-ratio", "0.3", "--think-ms", "20"]


def test_run_drives_locust_and_passes_the_gate(server_factory, tmp_path):
    srv = server_factory()
    # a load-test world: users 1,000,001.. with L = 10,000 (service.bootstrap --world W1); items 1..500
    rc = run.main(_args(srv, tmp_path) + ["--first-user-id", "1000001", "--seeded-len", "10000"])
    assert rc == 0, (tmp_path / "locust.log").read_text()[-2000:]
    stats = read_stats(tmp_path / "locust")
    assert stats[SCORE_NAME].requests == srv.n_score > 20
    assert stats[EVENTS_NAME].requests > 3
    # events: every id unique; candidates: spread around W1's 100, within its cap
    assert srv.event_ids and max(srv.event_ids.values()) == 1
    assert 80 < sum(srv.cand_counts) / len(srv.cand_counts) < 120 and max(srv.cand_counts) <= 200
    assert min(srv.user_ids) >= 1_000_001 and max(srv.user_ids) <= 1_000_050
    assert min(srv.item_ids) >= 1 and max(srv.item_ids) <= 500
    md = (tmp_path / "report.md").read_text()
    assert "## Gate: PASS" in md
    assert "seeded_history: 10,000 per user (= profile L)" in md and "first_user_id: 1000001" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    total = next(s for s in summary["server"]["stages"] if s["stage"] == "total")
    assert total["count"] == srv.n_score  # server-side delta saw exactly the run's requests
    assert (tmp_path / "latency.png").stat().st_size > 5000


def test_run_fails_the_gate_on_server_errors(server_factory, tmp_path):
    srv = server_factory(fail_every=5)
    rc = run.main(_args(srv, tmp_path))
    assert rc == 1
    stats = read_stats(tmp_path / "locust")
    assert stats[SCORE_NAME].failures == srv.n_score // 5 > 0
    assert "HTTP 503" in (tmp_path / "report.md").read_text()


def test_a_200_with_the_wrong_number_of_scores_is_a_failure(server_factory, tmp_path):
    srv = server_factory(short_every=4)
    rc = run.main(_args(srv, tmp_path))
    assert rc == 1
    stats = read_stats(tmp_path / "locust")
    assert stats[SCORE_NAME].failures == srv.n_score // 4 > 0
    assert "scores for" in (tmp_path / "report.md").read_text()


def test_run_refuses_non_loopback_and_unready_targets(tmp_path):
    run.check_target("http://127.0.0.1:8000")
    run.check_target("http://localhost:8000/metrics")
    with pytest.raises(ValueError, match="not a loopback"):
        run.check_target("http://10.1.2.3:8000")
    run.check_target("http://10.1.2.3:8000", allow_private=True)
    with pytest.raises(ValueError, match="not a loopback or private"):
        run.check_target("http://8.8.8.8", allow_private=True)
    with pytest.raises(ValueError, match="http"):
        run.check_target("ftp://127.0.0.1/")
    (tmp_path / "locust_final_stats.csv").write_text("stale")  # an earlier run's file must not survive
    assert run.main(["--host", "http://192.168.0.10:8000", "--smoke", "--out", str(tmp_path)]) == 2
    # nothing listens on port 1: readiness times out and the run is refused, not started
    assert run.main(["--host", "http://127.0.0.1:1", "--smoke", "--ready-timeout", "1", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "locust_stats.csv").exists() and not (tmp_path / "locust_final_stats.csv").exists()


def test_timespan_and_smoke_defaults():
    assert run.parse_timespan("20s") == 20 and run.parse_timespan("1m30s") == 90 and run.parse_timespan("2h") == 7200
    assert run.parse_timespan("45") == 45
    with pytest.raises(ValueError, match="run time"):
        run.parse_timespan("ten")
    a = run.parse_args(["--host", "http://127.0.0.1:1", "--smoke"])
    assert (a.users, a.run_time) == (4, "20s")
    a = run.parse_args(["--host", "http://127.0.0.1:1", "--smoke", "--users", "2"])
    assert a.users == 2
    with pytest.raises(SystemExit):
        run.parse_args(["--host", "http://127.0.0.1:1", "--run-time", "soon"])


def test_profile_and_seeded_length_come_from_the_stack(monkeypatch):
    """scripts/run_stack.sh --world exports the world as the default profile and its L."""
    monkeypatch.setenv("TWIN_LOADTEST_WORKLOAD", "w2")
    monkeypatch.setenv("TWIN_LOADTEST_SEEDED_LEN", "100000")
    a = run.parse_args(["--host", "http://127.0.0.1:1"])
    assert (a.profile, a.seeded_len) == ("W2", 100_000)
    assert run.parse_args(["--host", "http://127.0.0.1:1", "--profile", "w3"]).profile == "W3"
    assert "NOT the profile" in run.seeded_note(10_000, 1_000)
    assert run.seeded_note(10_000, None).startswith("unknown")
    cmd = run.locust_command(run.parse_args(["--host", "http://127.0.0.1:1", "--first-user-id", "7"]), "x")
    assert cmd[cmd.index("--first-user-id") + 1] == "7" and cmd[cmd.index("--workload") + 1] == "W2"
    monkeypatch.setenv("TWIN_LOADTEST_SEEDED_LEN", "lots")
    with pytest.raises(ValueError, match="TWIN_LOADTEST_SEEDED_LEN"):
        run.parse_args(["--host", "http://127.0.0.1:1"])
