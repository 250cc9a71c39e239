"""Redis with a password and with TLS through REDIS_URL, against real redis-servers this test starts
(Debian's redis-server, built with TLS; the certificate is self-signed, made here with openssl).
Wrong credentials are named as such (readiness reason, one-line start-up error), and the password
never shows in logs, /metrics or any answer."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cache.connection import open_redis
from cache.layout import Keys
from tests.conftest import free_port
from tests.service_world import NOW_MS, build_world, make_settings, running

SYSTEM_REDIS = shutil.which("redis-server")
PASSWORD = "pw-7f3a9c-never-print-me"
SCORE = {"user_id": 2, "candidates": [{"item_id": 5}], "context": {"ts": NOW_MS}}
needs_tls = pytest.mark.skipif(SYSTEM_REDIS is None or shutil.which("openssl") is None,
                               reason="needs a redis-server built with TLS and openssl")


def self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Server:
    """A redis-server with a password, on TCP or (with cert/key) TLS only; killed by stop()."""

    def __init__(self, d: Path, cert: Path | None = None, key: Path | None = None) -> None:
        self.port = free_port()
        binary = SYSTEM_REDIS if cert else None
        if binary is None:
            from cache.connection import redis_server_binary
            binary = redis_server_binary()
        net = (["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"] if cert else ["--port", str(self.port)])
        self.proc = subprocess.Popen([binary, *net, "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "",
                                      "--appendonly", "no", "--dir", str(d)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kw = dict(ssl=True, ssl_ca_certs=str(cert)) if cert else {}
        c = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=1, **kw)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except BaseException:
            self.stop()  # never leave a server behind a failed start
            raise
        finally:
            c.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def tls_server(tmp_path):
    cert, key = self_signed(tmp_path)
    s = Server(tmp_path, cert, key)
    yield s, cert
    s.stop()


@pytest.fixture
def auth_server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


async def serve_and_probe(url: str, tmp_path: Path, caplog) -> dict:
    """Build a world through `url`, serve it, and collect every answer and log line it produced."""
    handle = await open_redis(url)
    keys = Keys(prefix="auth", n_buckets=16)
    try:
        world = await build_world(url, handle, keys, tmp_path / "models")
        with caplog.at_level(logging.DEBUG):
            async with running(world.settings) as (_, client):
                answers = [await client.get("/health/ready"), await client.post("/v1/score", json=SCORE),
                           await client.post("/v1/events", json={"events": [
                               {"event_id": "a1", "user_id": 2, "item_id": 3, "ts": NOW_MS, "cross": {}}]}),
                           await client.get("/v1/models"), await client.post("/v1/score", json={"user_id": "x"})]
                metrics = (await client.get("/metrics")).text
    finally:
        await handle.aclose()
    return {"answers": answers, "metrics": metrics, "logs": caplog.text}


def assert_no_secret(seen: dict) -> None:
    text = "".join(r.text + str(r.headers) for r in seen["answers"]) + seen["metrics"] + seen["logs"]
    assert PASSWORD not in text


async def test_a_password_in_the_url_is_used_and_never_shown(auth_server, tmp_path, caplog):
    seen = await serve_and_probe(f"redis://:{PASSWORD}@127.0.0.1:{auth_server.port}/0", tmp_path, caplog)
    ready, score, ev = seen["answers"][:3]
    assert ready.status_code == 200, ready.text
    assert score.status_code == 200 and score.json()["degraded"] is False, score.text
    assert ev.status_code == 200 and ev.json() == {"accepted": 1, "new": 1}, ev.text
    assert_no_secret(seen)


@needs_tls
async def test_rediss_with_a_self_signed_certificate_serves_and_never_shows_the_secret(tls_server, tmp_path,
                                                                                        caplog):
    server, cert = tls_server
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    seen = await serve_and_probe(url, tmp_path, caplog)
    ready, score, ev = seen["answers"][:3]
    assert ready.status_code == 200, ready.text
    assert score.status_code == 200 and score.json()["degraded"] is False, score.text
    assert ev.status_code == 200 and ev.json()["accepted"] == 1, ev.text
    assert_no_secret(seen)


@needs_tls
async def test_an_untrusted_certificate_is_named_as_a_tls_failure(tls_server, tmp_path):
    server, _ = tls_server
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")  # a CA that did not sign the server's certificate
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0?ssl_cert_reqs=required&ssl_ca_certs={other}"
    settings = make_settings(url, Keys(prefix="tls", n_buckets=16), tmp_path / "models")
    async with running(settings) as (_, client):
        ready = await client.get("/health/ready")
    assert ready.status_code == 503 and "redis_tls_failed" in ready.json()["reasons"], ready.text


async def test_a_wrong_password_leaves_serve_up_unready_naming_authentication(auth_server, tmp_path, caplog):
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{auth_server.port}/0"
    settings = make_settings(url, Keys(prefix="auth", n_buckets=16), tmp_path / "models")
    with caplog.at_level(logging.DEBUG):
        async with running(settings) as (_, client):
            ready = await client.get("/health/ready")
            live = await client.get("/health/live")
            score = await client.post("/v1/score", json=SCORE)
            metrics = (await client.get("/metrics")).text
    assert live.status_code == 200
    reasons = ready.json()["reasons"]
    assert ready.status_code == 503 and "redis_auth_failed" in reasons and "redis_unavailable" not in reasons, reasons
    assert score.status_code == 503
    assert_no_secret({"answers": [ready, score], "metrics": metrics, "logs": caplog.text})


def test_bootstrap_with_a_wrong_password_exits_with_one_clear_line(auth_server, tmp_path):
    env = {**os.environ, "REDIS_URL": f"redis://:wrong-{PASSWORD}@127.0.0.1:{auth_server.port}/0",
           "TWIN_MODEL_ROOT": str(tmp_path / "models"), "TWIN_PORT": str(free_port(range_env="TWIN_TEST_HTTP_PORTS"))}
    p = subprocess.run([sys.executable, "-m", "service", "--bootstrap", "--data", str(tmp_path / "data")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    out = (p.stdout + p.stderr).strip().splitlines()
    assert "Traceback" not in p.stderr and len(out) == 1, p.stderr
    assert "credentials" in out[0] and "REDIS_URL" in out[0] and PASSWORD not in out[0], out
