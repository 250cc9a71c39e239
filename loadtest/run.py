"""Run one headless locust load test against a local stack, then write the report and apply the gate.

    python -m loadtest.run --host http://127.0.0.1:8000 --profile W1 --users 16 --spawn-rate 8 \
        --run-time 60s --budget-ms 30 --out reports/loadtest
    python -m loadtest.run --host http://127.0.0.1:8000 --smoke        # ~20 s, 4 users

Steps: wait for /health/ready, measure the baseline when a ratio is gated (the active model's bare
forward and its hardware floor, loadtest.baseline), scrape /metrics of every replica, run locust (a
subprocess with a hard timeout, so the run always ends), scrape again, write report.md / summary.json / PNGs.
Exit code: 0 gate passed, 1 gate failed, 2 the run itself could not be done.

Targets must be loopback addresses (this tool generates real load; it is not for other people's
servers). `--allow-private` also admits private-network addresses, for the docker-compose network.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from loadtest.baseline import measure as measure_baseline
from loadtest.profiles import PROFILES, get_profile
from loadtest.prom import scrape
from loadtest.report import build_report

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SMOKE = {"users": 4, "spawn_rate": 4.0, "run_time": "20s"}
DEFAULTS = {"users": 16, "spawn_rate": 8.0, "run_time": "60s"}


def parse_timespan(text: str) -> int:
    """'90', '90s', '1m30s', '2h' -> seconds (locust's --run-time syntax)."""
    t = text.strip().lower()
    if t.isdigit():
        return int(t)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", t)
    if not t or m is None:
        raise ValueError(f"run time {text!r} is not like 60s, 1m30s or 2h")
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


def check_target(url: str, allow_private: bool = False) -> None:
    """Refuses URLs whose host resolves to anything but loopback (or private, when allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target {url!r} must be an http(s) URL with a host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ValueError(f"target host {parts.hostname!r} does not resolve: {e}") from e
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not (ip.is_loopback or (allow_private and ip.is_private)):
            kind = "loopback or private" if allow_private else "loopback"
            raise ValueError(f"target {url!r} resolves to {ip}, which is not a {kind} address")


def expand_addresses(url: str) -> list[str]:
    """One URL per address the host resolves to (docker DNS returns every replica of a service)."""
    parts = urlsplit(url)
    port = parts.port or 80
    addrs = sorted({i[4][0] for i in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)})
    return [urlunsplit(parts._replace(netloc=f"[{a}]:{port}" if ":" in a else f"{a}:{port}")) for a in addrs]


def wait_ready(host: str, timeout_s: float) -> None:
    url = host.rstrip("/") + "/health/ready"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (host checked)
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s (last: {last})")


def locust_command(args: argparse.Namespace, csv_prefix: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", args.host,
           "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", args.run_time,
           "--csv", str(csv_prefix), "--csv-full-history", "--stop-timeout", "5", "--only-summary",
           "--workload", args.profile, "--event-ratio", str(args.event_ratio), "--think-ms", str(args.think_ms)]
    if args.n_users is not None:
        cmd += ["--n-users", str(args.n_users)]
    if args.n_items is not None:
        cmd += ["--n-items", str(args.n_items)]
    if args.id_offset is not None:
        cmd += ["--id-offset", str(args.id_offset)]
    if args.first_user_id is not None:
        cmd += ["--first-user-id", str(args.first_user_id)]
    if args.expect_workers:
        cmd += ["--master", "--expect-workers", str(args.expect_workers), "--expect-workers-max-wait", "120"]
    return cmd


def run_locust(cmd: list[str], timeout_s: float, log_path: Path) -> int:
    env = dict(os.environ)
    # the locustfile imports `loadtest.*`: make the package importable from a source checkout too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with log_path.open("w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.error("locust still running after %.0f s; stopping it", timeout_s)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise


def _scrape_all(urls: list[str], out: Path, tag: str) -> list[str]:
    texts = []
    for i, url in enumerate(urls):
        text = scrape(url)
        (out / f"metrics_{tag}_{i}.prom").write_text(text)
        texts.append(text)
    return texts


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"environment variable {name}={value!r} is not a non-negative integer")
    return int(value)


def seeded_note(profile_len: int, seeded_len: int | None) -> str:
    """What the report says about L: the profile's name promises profile_len behaviors per user."""
    if seeded_len is None:
        return f"unknown (profile L={profile_len:,}; seed a world with service.bootstrap --world for it to hold)"
    if seeded_len != profile_len:
        return f"{seeded_len:,} per user, NOT the profile's L={profile_len:,}"
    return f"{seeded_len:,} per user (= profile L)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("TWIN_LOADTEST_HOST", f"http://127.0.0.1:{os.environ.get('TWIN_PORT', '8000')}"),
                    help="base URL of the service or its load balancer (default: env TWIN_LOADTEST_HOST, "
                         "else http://127.0.0.1:$TWIN_PORT, port 8000 when unset)")
    ap.add_argument("--profile", type=str.upper, default=os.environ.get("TWIN_LOADTEST_WORKLOAD", "W1").upper(),
                    choices=sorted(PROFILES), help="workload (DESIGN.md sec. 4; default env TWIN_LOADTEST_WORKLOAD, else W1)")
    ap.add_argument("--users", type=int, help=f"concurrent simulated users (default {DEFAULTS['users']})")
    ap.add_argument("--spawn-rate", type=float, help=f"users started per second (default {DEFAULTS['spawn_rate']:g})")
    ap.add_argument("--run-time", help=f"how long to run, e.g. 60s, 2m (default {DEFAULTS['run_time']})")
    ap.add_argument("--budget-ms", type=float, default=30.0, help="p99 budget of POST /v1/score in ms")
    ap.add_argument("--out", default="reports/loadtest", help="directory for CSVs, scrapes and the report")
    ap.add_argument("--smoke", action="store_true", help="short small run: 4 users, 20 s (unless given)")
    ap.add_argument("--n-users", type=int, help="demo users (default: env TWIN_DEMO_USERS, else 600)")
    ap.add_argument("--n-items", type=int, help="demo items (default: env TWIN_DEMO_ITEMS, else 20000)")
    ap.add_argument("--id-offset", type=int, help="first demo id (default: env TWIN_DEMO_FIRST_ID, else 1)")
    ap.add_argument("--first-user-id", type=int,
                    help="first user id of a load-test world (default: env TWIN_DEMO_FIRST_USER, else --id-offset)")
    ap.add_argument("--seeded-len", type=int, default=_env_int("TWIN_LOADTEST_SEEDED_LEN"),
                    help="history length L of the seeded users, for the report (default: env "
                         "TWIN_LOADTEST_SEEDED_LEN, which scripts/run_stack.sh --world sets)")
    ap.add_argument("--event-ratio", type=float, default=0.1, help="share of requests that post events")
    ap.add_argument("--think-ms", type=float, default=0.0, help="mean pause between a user's requests")
    ap.add_argument("--metrics-url", action="append", default=[],
                    help="a replica's /metrics (repeat per replica; default HOST/metrics)")
    ap.add_argument("--metrics-each-address", action="store_true",
                    help="scrape every address a metrics host resolves to (docker service DNS)")
    ap.add_argument("--no-metrics", action="store_true", help="skip the server-side breakdown")
    ap.add_argument("--allow-private", action="store_true", help="also admit private-network targets")
    ap.add_argument("--expect-workers", type=int, default=0, help="run as master and wait for N locust workers")
    ap.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for /health/ready")
    ap.add_argument("--max-http-over-forward", type=float,
                    help="gate: bound on HTTP p99 / bare forward p99, both measured in this run (loadtest.baseline)")
    ap.add_argument("--max-forward-over-floor", type=float,
                    help="gate: bound on bare forward p50 / GEMM+read floor p50, measured just before the load")
    ap.add_argument("--model-root", default=os.environ.get("TWIN_MODEL_ROOT", "var/models"),
                    help="registry whose active model the baseline runs (default: env TWIN_MODEL_ROOT)")
    args = ap.parse_args(argv)
    base = SMOKE if args.smoke else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.users < 1 or args.spawn_rate <= 0:
        ap.error(f"--users must be >= 1 and --spawn-rate > 0, got {args.users}, {args.spawn_rate}")
    try:
        if parse_timespan(args.run_time) < 1:
            ap.error(f"--run-time must be at least 1 s, got {args.run_time!r}")
    except ValueError as e:
        ap.error(str(e))
    return args


def clear_previous_run(out: Path) -> None:
    """A stale CSV from an earlier run must never be reported as this run's."""
    for pattern in ("locust_*.csv", "locust.log", "metrics_*.prom", "report.md", "summary.json", "*.png"):
        for f in out.glob(pattern):
            f.unlink()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    run_s = parse_timespan(args.run_time)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clear_previous_run(out)
    try:
        metrics_urls = [] if args.no_metrics else (args.metrics_url or [args.host.rstrip("/") + "/metrics"])
        for url in [args.host, *metrics_urls]:
            check_target(url, args.allow_private)
        if args.metrics_each_address:
            metrics_urls = [u for url in metrics_urls for u in expand_addresses(url)]
        wait_ready(args.host, args.ready_timeout)
        bounds = {name: v for name, v in (("http_p99_over_forward_p99", args.max_http_over_forward),
                                          ("forward_over_floor", args.max_forward_over_floor)) if v is not None}
        baseline = None
        if bounds:  # just before the load, on the same box: the reference the ratios are read against
            seq_len = args.seeded_len or _env_int("TWIN_MAX_SEQ_LEN")
            baseline = measure_baseline(Path(args.model_root), get_profile(args.profile).candidates, seq_len)
            log.info("baseline: %s", baseline)
        before = _scrape_all(metrics_urls, out, "before")
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cmd = locust_command(args, out / "locust")
        log.info("running: %s", " ".join(cmd))
        # margin: ramp-up, the 5 s stop timeout, and master/worker handshakes
        rc = run_locust(cmd, timeout_s=run_s + 120 + (120 if args.expect_workers else 0), log_path=out / "locust.log")
        after = _scrape_all(metrics_urls, out, "after")
    except (ValueError, TimeoutError, OSError, subprocess.TimeoutExpired) as e:
        log.error("load test not run: %s", e)
        return 2
    if not (out / "locust_stats.csv").is_file():
        log.error("locust exited with %d and wrote no stats; see %s", rc, out / "locust.log")
        return 2
    profile = get_profile(args.profile)
    if args.seeded_len is not None and args.seeded_len != profile.seq_len:
        log.warning("profile %s is meant for L=%d but the seeded users have L=%d", profile.name, profile.seq_len,
                    args.seeded_len)
    meta = {
        "workload": profile.name, "description": profile.description,
        "target": args.host, "users": args.users, "spawn_rate": args.spawn_rate, "run_time": args.run_time,
        "event_ratio": args.event_ratio, "think_ms": args.think_ms,
        "n_users": args.n_users or os.environ.get("TWIN_DEMO_USERS", 600),
        "n_items": args.n_items or os.environ.get("TWIN_DEMO_ITEMS", 20000),
        "first_user_id": args.first_user_id or os.environ.get("TWIN_DEMO_FIRST_USER")
        or args.id_offset or os.environ.get("TWIN_DEMO_FIRST_ID", 1),
        "seeded_history": seeded_note(profile.seq_len, args.seeded_len),
        "replicas_scraped": len(metrics_urls), "started_utc": started, "locust_exit_code": rc,
    }
    result = build_report(out / "locust", out, args.budget_ms, before or None, after or None, meta,
                          baseline=baseline, bounds=bounds)
    print((out / "report.md").read_text())
    print(f"gate: {'PASS' if result.passed else 'FAIL'}; report: {out / 'report.md'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
