"""The parts of `make compose-smoke` that can be checked without a Docker engine (CI has none):

* every Dockerfile (the project's and deploy/docker/'s registry-less stand-ins) parses with
  Docker's own parser (the `dockerfile` package wraps BuildKit's Go parser) and passes a lint:
  stages and `COPY --from` refer to earlier stages, every `${VAR}` is declared, apt installs skip
  recommends and drop their lists;
* compose's own validation (`docker-compose config -q`, or `docker compose`), where a compose
  binary is installed, with and without the W1 env file;
* the `init` command adds `--world` exactly when TWIN_WORLD is set; deploy/compose/W1.env agrees
  with service.seeding.WORLDS and names only variables the compose file reads;
* the stand-in images' entrypoints: nginx drops `resolve` (Debian's 1.22 lacks it) and nothing
  else, redis turns protected mode off.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import dockerfile
import pytest
import yaml

from service.seeding import WORLDS

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))]
COMPOSE = ROOT / "docker-compose.yml"
W1_ENV = ROOT / "deploy" / "compose" / "W1.env"


def lint(path: Path) -> list[str]:
    """Problems of one Dockerfile, as 'line N: what'."""
    problems: list[str] = []
    cmds = dockerfile.parse_file(str(path))
    global_args: set[str] = set()
    stages: dict[str, set[str]] = {}  # stage name -> its ENV names (a child stage inherits ENV, not ARG)
    env: set[str] = set()
    declared: set[str] = set()  # ARG and ENV names visible in the current stage
    seen_from = False
    for c in cmds:
        where = f"line {c.start_line}"
        if c.cmd == "ARG":
            (declared if seen_from else global_args).add(c.value[0].split("=", 1)[0])
        elif c.cmd == "FROM":
            seen_from = True
            image = c.value[0]
            for var in re.findall(r"\$\{(\w+)", image):
                if var not in global_args:
                    problems.append(f"{where}: FROM uses ${{{var}}}, not an ARG before the first FROM")
            if not re.search(r"\$\{|:|@", image) and image not in stages:
                problems.append(f"{where}: FROM {image}: neither an earlier stage nor a tagged image")
            env = {"PATH", "HOME"} | stages.get(image, set())
            declared = set(env)
            if len(c.value) == 3:
                stages[c.value[2]] = env
        elif c.cmd == "ENV":
            env |= set(c.value[0::2])
            declared |= set(c.value[0::2])
        elif c.cmd in ("COPY", "ADD"):
            for flag in c.flags:
                if flag.startswith("--from=") and flag.split("=", 1)[1] not in stages:
                    problems.append(f"{where}: {flag} is not an earlier stage")
        if c.cmd in ("RUN", "COPY", "ADD", "WORKDIR", "ENV", "USER"):
            text = " ".join(c.value)
            for var in re.findall(r"\$\{(\w+)", text):
                if var not in declared:
                    problems.append(f"{where}: {c.cmd} uses ${{{var}}}, not declared (ARG/ENV) in this stage")
            if c.cmd == "RUN" and "apt-get install" in text:
                if "--no-install-recommends" not in text:
                    problems.append(f"{where}: apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists" not in text:
                    problems.append(f"{where}: apt lists left in the layer")
    return problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_parse_and_pass_the_lint(path):
    assert lint(path) == []


def test_the_lint_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm AS a\nARG ONLY_A=1\nRUN apt-get install -y curl\nRUN echo ${NOPE}\n"
                   "FROM a AS b\nCOPY --from=c /x /x\nRUN echo ${ONLY_A}\n")
    problems = lint(bad)
    assert any("--no-install-recommends" in p for p in problems) and any("apt lists" in p for p in problems)
    assert any("${NOPE}" in p for p in problems) and any("--from=c" in p for p in problems)
    assert any("line 7" in p and "${ONLY_A}" in p for p in problems)  # an ARG does not reach a child stage


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("env_file", [None, W1_ENV], ids=["defaults", "W1"])
def test_compose_accepts_the_file(env_file, tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose / docker-compose binary (the compose-spec schema test still runs)")
    args = [*cli, "-p", "twinlint", "-f", str(COMPOSE)] + (["--env-file", str(env_file)] if env_file else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWIN_", "LOCUST_", "TORCH_"))}
    res = subprocess.run([*args, "--profile", "loadtest", "config", "-q"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    broken = tmp_path / "docker-compose.yml"  # the check can fail: v1 and v2 both refuse an unknown key
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period:", "    stop_grace_perod:"))
    res = subprocess.run([*cli, "-p", "twinlint", "-f", str(broken), "config", "-q"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=env)
    assert res.returncode != 0


def _init_args(world: str | None) -> list[str]:
    """What init's shell command runs, with `python` swapped for echo (compose turns $$ into $)."""
    cmd = yaml.safe_load(COMPOSE.read_text())["services"]["init"]["command"]
    script = cmd[2].replace("$$", "$").replace("exec python -m service.bootstrap", "echo", 1)
    env = {"PATH": os.environ["PATH"], **({"TWIN_WORLD": world} if world is not None else {})}
    return subprocess.run([cmd[0], cmd[1], script], capture_output=True, text=True, env=env, check=True).stdout.split()


def test_init_seeds_a_world_only_when_twin_world_is_set():
    assert _init_args(None) == ["--data", "/app/var/demo_data"]
    assert _init_args("") == ["--data", "/app/var/demo_data"]
    assert _init_args("W1") == ["--data", "/app/var/demo_data", "--world", "W1"]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_w1_env_file_matches_the_seeded_world_and_the_compose_file():
    env = _env_file(W1_ENV)
    w = WORLDS[env["TWIN_WORLD"]]
    assert int(env["TWIN_MAX_SEQ_LEN"]) == int(env["TWIN_LOADTEST_SEEDED_LEN"]) == w.seq_len
    assert int(env["TWIN_DEMO_USERS"]) == w.n_users and int(env["TWIN_DEMO_FIRST_USER"]) == w.first_user_id
    assert env["TWIN_LOADTEST_WORKLOAD"] == w.name
    # every world user's sequence fits the user cache (~300 B per behavior: projection, ids, ts, cross)
    assert float(env["TWIN_USER_CACHE_MB"]) * 2**20 >= w.n_users * w.seq_len * 300
    compose = COMPOSE.read_text()
    unread = [k for k in env if not re.search(rf"\b{k}\b", compose)]
    assert not unread, f"W1.env sets variables docker-compose.yml never reads: {unread}"


def _entrypoint_lines(name: str) -> list[str]:
    """The lines the Dockerfile's `printf '%s\\n' ... > /usr/local/bin/<name>` writes."""
    text = (ROOT / "deploy" / "docker" / f"{name.split('-')[0]}.Dockerfile").read_text()
    block = text[text.index("printf '%s\\n'"):text.index(f"> /usr/local/bin/{name}")]
    return [m.replace("'\\''", "'") for m in re.findall(r"'((?:[^']|'\\'')*)'", block)][1:]


def test_the_nginx_stand_in_strips_only_resolve(tmp_path):
    sed_line = next(ln for ln in _entrypoint_lines("nginx-entrypoint") if ln.startswith("sed "))
    expr = re.search(r'sed -E "([^"]+)"', sed_line).group(1)
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    out = subprocess.run(["sed", "-E", expr], input=conf, capture_output=True, text=True, check=True).stdout
    assert re.search(r"server scorer:8000 resolve", conf)
    assert not re.search(r"^\s*server\s.*\bresolve\b", out, re.M)
    assert re.search(r"^\s*server scorer:8000 max_fails=1 fail_timeout=2s;$", out, re.M)
    changed = [(a.strip(), b.strip()) for a, b in zip(conf.splitlines(), out.splitlines()) if a != b]
    assert len(conf.splitlines()) == len(out.splitlines()) and changed == [
        ("server scorer:8000 resolve max_fails=1 fail_timeout=2s;", "server scorer:8000 max_fails=1 fail_timeout=2s;")]


def test_the_redis_stand_in_turns_protected_mode_off(tmp_path):
    script = tmp_path / "redis-entrypoint"
    script.write_text("\n".join(_entrypoint_lines("redis-entrypoint")) + "\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "redis-server").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "redis-server").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    run = lambda *a: subprocess.run(["sh", str(script), *a], capture_output=True, text=True, env=env).stdout.strip()
    assert run("redis-server", "--appendonly", "yes") == "--protected-mode no --appendonly yes"
    assert run("echo", "other") == "other"  # any other command runs unchanged
