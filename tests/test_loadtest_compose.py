"""docker-compose.yml, Dockerfile, deploy/nginx.conf, deploy/docker/*, deploy/compose/*.env and the
stack scripts, checked without a Docker engine: the compose-spec JSON schema, the topology's
invariants, every referenced file and module, the image's HEALTHCHECK command run for real against
an HTTP server, and the registry-less stand-in images' entrypoints. `make compose-smoke` runs the
stack itself (docs/loadtest.md)."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loadtest import run

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _interpolate_defaults(text: str) -> str:
    """What compose does with ${VAR:-default} when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_spec(tmp_path):
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (ships the compose-spec schema)")
    res = _check_jsonschema(COMPOSE)
    assert res.returncode == 0, res.stdout + res.stderr
    # the validator really checks: an unknown depends_on condition is refused
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_completed_successfully", "service_finished"))
    assert _check_jsonschema(broken).returncode != 0


def test_topology_redis_init_scorer_lb(compose):
    svc = compose["services"]
    assert {"redis", "init", "scorer", "lb", "locust-master", "locust-worker"} <= set(svc)
    redis = svc["redis"]
    assert _interpolate_defaults(redis["image"]).startswith("redis:7")  # the official image by default
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]

    init_cmd = svc["init"]["command"]
    assert init_cmd[:2] == ["sh", "-c"] and init_cmd[2].startswith("exec python -m service.bootstrap ")
    assert svc["init"]["restart"] == "no"
    assert svc["init"]["depends_on"]["redis"]["condition"] == "service_healthy"

    scorer = svc["scorer"]
    assert "container_name" not in scorer and "ports" not in scorer  # --scale scorer=N must work
    assert scorer["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert scorer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/health/ready" in " ".join(scorer["healthcheck"]["test"])
    assert scorer["environment"]["REDIS_URL"].startswith("redis://redis:")
    # init writes the registry the scorers read: the same named volume at TWIN_MODEL_ROOT
    root = scorer["environment"]["TWIN_MODEL_ROOT"]
    assert f"models:{root}" in scorer["volumes"] and f"models:{root}" in svc["init"]["volumes"]
    assert svc["lb"]["depends_on"]["scorer"]["condition"] == "service_healthy"
    assert "healthcheck" in svc["lb"]

    for name, s in svc.items():
        is_lt = name.startswith("locust")
        assert ("loadtest" in s.get("profiles", [])) == is_lt, name
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            assert src in compose["volumes"] or (ROOT / src).exists(), f"{name}: volume source {src} missing"
        if "build" in s:
            assert (ROOT / s["build"]["context"]).is_dir()
            assert re.search(rf"^FROM .* AS {s['build']['target']}$", DOCKERFILE.read_text(), re.M), name


def test_nginx_finds_scaled_replicas_through_docker_dns(compose):
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", conf, re.M)
    port = compose["services"]["scorer"]["expose"][0]
    assert re.search(rf"server scorer:{port} resolve", conf)
    assert conf.count("{") == conf.count("}")
    lb = compose["services"]["lb"]
    assert any(v.startswith("./deploy/nginx.conf:/etc/nginx/nginx.conf") for v in lb["volumes"])
    assert lb["ports"][0].endswith(":8080") and "listen 8080;" in conf


def test_loadtest_profile_commands_parse(compose):
    master = compose["services"]["locust-master"]["command"]
    assert master[:3] == ["python", "-m", "loadtest.run"]
    args = run.parse_args([_interpolate_defaults(a) for a in master[3:]])
    assert args.allow_private and args.metrics_each_address and args.expect_workers == 2
    worker = compose["services"]["locust-worker"]
    assert worker["command"][:3] == ["locust", "-f", "/app/locustfile.py"] and "--worker" in worker["command"]
    assert "/app/locustfile.py" in DOCKERFILE.read_text()
    assert _interpolate_defaults(str(worker["deploy"]["replicas"])) == "2"


def _stages(dockerfile: str) -> list[tuple[str, str]]:
    """(stage name, body) in order."""
    parts = re.split(r"^FROM .* AS (\S+)$", dockerfile, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_dockerfile_cpu_torch_first_non_root_and_real_entrypoints():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M) and re.search(r"^ARG TORCH_VERSION=\S+$", text, re.M)
    torch_at = text.index('pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"')
    local_at = text.index('/tmp/build-local/torch-${TORCH_VERSION}+${TORCH_VARIANT}-*.whl')
    # torch first (a local wheel of that version and variant, else the variant's index), so the
    # project's install finds it met and never pulls the default CUDA build
    assert max(torch_at, local_at) < text.index('RUN pip install -c requirements.lock ".[${EXTRAS}]"')
    assert (ROOT / "deploy/docker/build-local/README.md").is_file()  # COPY of the folder works in a clone
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert (ROOT / src).exists(), f"COPY source {src} missing"
    stages = _stages(text)
    assert stages[-1][0] == "runtime"  # `docker build .` builds the service
    runtime = stages[-1][1]
    assert re.search(r"^USER twin$", runtime, re.M) and "useradd" in text
    assert re.search(r'^CMD \["python", "-m", "service"\]$', runtime, re.M)
    assert importlib.util.find_spec("service.__main__") is not None
    assert importlib.util.find_spec("service.bootstrap") is not None, "compose `init` runs service.bootstrap"
    pkgs = {p.split("*")[0] for p in __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
            ["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert pkgs <= copied, f"packages not copied into the image: {pkgs - copied}"


def test_the_service_serves_the_endpoints_the_stack_probes():
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    # no lifespan (no Redis, no model): only whether each route exists, i.e. is not a 404
    client = TestClient(create_app(Settings()), raise_server_exceptions=False)
    assert client.get("/nope").status_code == 404
    for method, path in (("GET", "/health/ready"), ("GET", "/health/live"), ("GET", "/metrics"),
                         ("POST", "/v1/score"), ("POST", "/v1/events")):
        assert client.request(method, path, json={}).status_code != 404, path


class _Health(BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:
        self.send_response(self.code if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_dockerfile_healthcheck_command_follows_readiness(monkeypatch):
    line = re.search(r"^\s*CMD (\[.*\])$", DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1], re.M).group(1)
    cmd = json.loads(line)
    assert cmd[0] == "python"
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env = {"TWIN_PORT": str(srv.server_address[1]), "PATH": "/usr/bin:/bin"}
        probe = [sys.executable, *cmd[1:]]
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
        _Health.code = 503
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        _Health.code = 200
        srv.shutdown()
        srv.server_close()


def test_run_stack_script_is_valid_bash():
    script = ROOT / "scripts" / "run_stack.sh"
    assert script.stat().st_mode & 0o111, "scripts/run_stack.sh must be executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--replicas" in out.stdout
    bad = subprocess.run(["bash", str(script), "--replicas", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--replicas" in bad.stderr
    assert shlex.split("scripts/run_stack.sh --smoke")  # documented form
