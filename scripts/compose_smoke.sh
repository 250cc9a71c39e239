#!/usr/bin/env bash
# `make compose-smoke`: the docker-compose stack for real, on a machine that reaches no container
# registry (only Debian's and PyPI's package archives), then gone without a trace.
#
#   1. tools: installs docker.io / docker-compose / debootstrap where missing (apt-get, as root)
#   2. engine: starts dockerd (overlay2) when none answers; left running (STOP_ENGINE=1 stops it)
#   3. images: python:3.11-slim, redis:7 and nginx pulled when a registry answers; otherwise built
#      from Debian's packages on a bookworm base made with debootstrap + docker import
#      (deploy/docker/*.Dockerfile); then the project's two images, with the local CPU torch wheel
#      and the host's CA bundle in the build context (deploy/docker/build-local/, git-ignored)
#   4. `up --scale scorer=N`, every healthcheck awaited
#   5. scripts/blackbox_check.py through nginx (score, explain, events, models, 422, 401/403/200)
#   6. the compose `loadtest` profile (locust master + 2 workers) for RUN_TIME; its table printed;
#      every scorer replica must have served requests
#   7. `down -v` (also on failure), then no container, network or volume of the project may remain
#
# Env: COMPOSE_PROJECT (twinsmoke), TWIN_LB_PORT (18080), SCORERS (2), RUN_TIME (30s), USERS (4),
# BUDGET_MS (650: the latency gate; 2 scorers, locust and nginx share the machine's cores),
# TORCH_WHEEL (/opt/wheels/torch-$TORCH_VERSION+cpu-...whl; unset/absent -> the PyTorch index),
# CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt), PULL (auto | never), DEBIAN_MIRROR, STOP_ENGINE,
# ENV_FILE (a compose --env-file, e.g. deploy/compose/W1.env: init seeds that world, the scorers and
# locust are sized for it; the shell's variables above still win over the file's).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${COMPOSE_PROJECT:-twinsmoke}"
LB_PORT="${TWIN_LB_PORT:-18080}"
SCORERS="${SCORERS:-2}"
RUN_TIME="${RUN_TIME:-30s}"
USERS="${USERS:-4}"
BUDGET_MS="${BUDGET_MS:-650}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-${TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PULL="${PULL:-auto}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK=var/compose-smoke
BUILD_LOCAL=deploy/docker/build-local
BASE_IMAGE=twin-local/debian:bookworm
T0=$SECONDS
mkdir -p "$WORK"

step() { printf '\n== compose-smoke [%3ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { echo "compose-smoke: $*" >&2; exit 1; }

# --- 1. tools ------------------------------------------------------------------------------------
step "tools"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else missing+=(docker-compose); COMPOSE=(docker-compose)
fi
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "needs ${missing[*]} (apt-get install as root)"
  echo "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/apt.log"
fi
command -v docker >/dev/null || die "no docker client after installing docker.io"
echo "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n 1))"

# --- 2. engine -----------------------------------------------------------------------------------
step "engine"
if ! docker info >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "no Docker engine answers and starting one needs root"
  echo "starting dockerd (overlay2; log $WORK/dockerd.log)"
  setsid dockerd --storage-driver overlay2 >"$WORK/dockerd.log" 2>&1 </dev/null &
  echo $! >"$WORK/dockerd.pid"
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log" >&2; die "dockerd did not come up"; }
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}'
export DOCKER_BUILDKIT=0  # the classic builder: BuildKit's dockerfile frontend is an image from a registry

# --- 3. images -----------------------------------------------------------------------------------
have() { docker image inspect "$1" >/dev/null 2>&1; }
pulled() {  # pulled IMAGE: present, or pulled now (a registry answered)
  have "$1" && return 0
  [[ "$PULL" == auto ]] && timeout 60 docker pull -q "$1" >/dev/null 2>&1
}
debian_base() {
  have "$BASE_IMAGE" && return
  echo "building $BASE_IMAGE: debootstrap --variant=minbase bookworm (log $WORK/debootstrap.log)"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  tar -C "$WORK/rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
}
local_image() {  # local_image TAG DOCKERFILE: FROM the Debian base, no context, host network for apt
  have "$1" && return
  debian_base
  echo "building $1 from $2 (log $WORK/build-$(basename "$2").log)"
  docker build --force-rm --network host --build-arg "BASE=$BASE_IMAGE" -t "$1" - <"$2" >"$WORK/build-$(basename "$2").log" 2>&1 \
    || { tail -n 30 "$WORK/build-$(basename "$2").log" >&2; die "building $1 failed"; }
}
step "images"
if pulled python:3.11-slim; then PY_IMAGE=python:3.11-slim
else PY_IMAGE=twin-local/python:3.11-bookworm; local_image "$PY_IMAGE" deploy/docker/python.Dockerfile; fi
if pulled redis:7; then REDIS_IMAGE=redis:7
else REDIS_IMAGE=twin-local/redis:7-bookworm; local_image "$REDIS_IMAGE" deploy/docker/redis.Dockerfile; fi
if pulled nginx:1.28-alpine; then NGINX_IMAGE=nginx:1.28-alpine
else NGINX_IMAGE=twin-local/nginx:1.22-bookworm; local_image "$NGINX_IMAGE" deploy/docker/nginx.Dockerfile; fi
echo "python: $PY_IMAGE, redis: $REDIS_IMAGE, nginx: $NGINX_IMAGE"

find "$BUILD_LOCAL" -mindepth 1 ! -name README.md -delete
build_args=(--build-arg "PYTHON_IMAGE=$PY_IMAGE")
if [[ -f "$TORCH_WHEEL" ]]; then
  ln "$TORCH_WHEEL" "$BUILD_LOCAL/" 2>/dev/null || cp "$TORCH_WHEEL" "$BUILD_LOCAL/"
  echo "torch: $(basename "$TORCH_WHEEL") from this disk"
else
  echo "torch: no local wheel at $TORCH_WHEEL; the build reaches the PyTorch index"
fi
if [[ -f "$CA_BUNDLE" ]]; then
  cp "$CA_BUNDLE" "$BUILD_LOCAL/ca-certificates.crt"
  build_args+=(--build-arg PIP_CERT=/tmp/build-local/ca-certificates.crt)
fi
for target in runtime loadtest; do
  tag=twin-serving:cpu; [[ $target == loadtest ]] && tag=twin-serving-loadtest:cpu
  echo "building $tag (target $target; log $WORK/build-$target.log)"
  docker build --force-rm --network host "${build_args[@]}" --target "$target" -t "$tag" . >"$WORK/build-$target.log" 2>&1 \
    || { tail -n 40 "$WORK/build-$target.log" >&2; die "building $tag failed"; }
done
find "$BUILD_LOCAL" -mindepth 1 ! -name README.md -delete
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(twin|python|redis|nginx)' || true

# --- 4. up ---------------------------------------------------------------------------------------
export TWIN_PYTHON_IMAGE="$PY_IMAGE" TWIN_REDIS_IMAGE="$REDIS_IMAGE" TWIN_NGINX_IMAGE="$NGINX_IMAGE"
export TWIN_LB_PORT="$LB_PORT" LOCUST_WORKERS=2
export TWIN_ADMIN_TOKEN="smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export TWIN_LOADTEST_RUN_TIME="$RUN_TIME" TWIN_LOADTEST_USERS="$USERS" TWIN_LOADTEST_SPAWN_RATE="$USERS"
export TWIN_LOADTEST_BUDGET_MS="$BUDGET_MS"
ENV_ARGS=()
[[ -z "${ENV_FILE:-}" ]] || { [[ -f "$ENV_FILE" ]] || die "no env file $ENV_FILE"; ENV_ARGS=(--env-file "$ENV_FILE"); }
dc() { "${COMPOSE[@]}" -p "$PROJECT" "${ENV_ARGS[@]}" --profile loadtest "$@"; }
label="label=com.docker.compose.project=$PROJECT"
cids() {  # cids SERVICE...: the project's containers of these services, running or exited
  local s; for s in "$@"; do docker ps -aq --filter "$label" --filter "label=com.docker.compose.service=$s"; done
}
leftovers() {
  { docker ps -aq --filter "$label"; docker network ls -q --filter "$label"; docker volume ls -q --filter "$label"; } | wc -l
}
teardown() {
  local rc=$?
  trap - EXIT
  step "down -v"
  if ((rc != 0)); then
    dc ps >&2 || true
    for c in $(docker ps -aq --filter "$label"); do
      echo "--- $(docker inspect -f '{{.Name}}' "$c") (last lines)" >&2
      docker logs --tail 15 "$c" 2>&1 | tr '\r' '\n' | tail -n 15 | cut -c1-240 >&2 || true
    done
  fi
  dc down -v --remove-orphans --timeout 20 >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; rc=1; }
  echo "left behind: $(leftovers) containers/networks/volumes of project $PROJECT"
  docker ps -a; docker network ls; docker volume ls
  (($(leftovers) == 0)) || { echo "compose-smoke: the project left objects behind" >&2; rc=1; }
  if [[ -n "${STOP_ENGINE:-}" && -f "$WORK/dockerd.pid" ]]; then
    kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null || true; rm -f "$WORK/dockerd.pid"
  fi
  step "$( ((rc == 0)) && echo PASS || echo "FAIL (exit $rc)") in $((SECONDS - T0)) s"
  exit "$rc"
}
((  $(leftovers) == 0 )) || die "project $PROJECT already has containers/networks/volumes: '${COMPOSE[*]} -p $PROJECT down -v' first"
trap teardown EXIT
step "up --scale scorer=$SCORERS (init trains the demo model: a few minutes)"
dc up -d --no-build --scale "scorer=$SCORERS" redis init scorer lb >"$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log" >&2; die "up failed"; }
docker logs "$(cids init)" 2>&1 | grep -E "^(published|bootstrap done|seeded world)" || true
[[ "$(docker inspect -f '{{.State.ExitCode}}' "$(cids init)")" == 0 ]] || die "init failed"

step "healthchecks"
deadline=$((SECONDS + 300))
while :; do
  states=()
  for c in $(cids redis scorer lb); do states+=("$(docker inspect -f '{{.Name}}={{.State.Health.Status}}' "$c")"); done
  unhealthy=$(printf '%s\n' "${states[@]}" | grep -cv '=healthy$' || true)
  ((${#states[@]} == SCORERS + 2 && unhealthy == 0)) && break
  ((SECONDS < deadline)) || die "not healthy after 300 s: ${states[*]}"
  sleep 2
done
docker ps -a --filter "$label" --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'

# --- 5. black-box ----------------------------------------------------------------------------------
step "black-box check through nginx (http://127.0.0.1:$LB_PORT)"
python3 scripts/blackbox_check.py --url "http://127.0.0.1:$LB_PORT" --admin-token "$TWIN_ADMIN_TOKEN"

# --- 6. locust -------------------------------------------------------------------------------------
step "loadtest profile: locust master + 2 workers, $USERS users, $RUN_TIME, budget p99 <= $BUDGET_MS ms"
set +e
dc up --no-build --no-deps --scale locust-worker=2 --exit-code-from locust-master locust-master locust-worker \
  >"$WORK/locust.log" 2>&1
lt_rc=$?
set -e
# the report loadtest.run printed (its locust tables, the server-side breakdown, the gate); the
# files (report.md, summary.json, CSVs, plots) are copied out before `down -v` removes the volume
master="$(cids locust-master)"
docker logs "$master" 2>&1 | sed -n '/^# Load test: /,$p' | grep -v '^!\[' | grep -v '^## Plots'
rm -rf "$WORK/reports" && docker cp "$master:/reports/loadtest" "$WORK/reports" && echo "report: $WORK/reports/report.md"
count_py='import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("twin_requests_total{")
              and "endpoint=\"/v1/score\"" in line and "code=\"200\"" in line)))'
for c in $(cids scorer); do
  n=$(docker exec "$c" python -c "$count_py")
  echo "$(docker inspect -f '{{.Name}}' "$c"): $n score requests answered 200"
  ((n > 0)) || die "replica $c served no score request: nginx does not spread the load"
done
((lt_rc == 0)) || die "the loadtest profile failed (exit $lt_rc; 1 = gate failed, 2 = not run; log $WORK/locust.log)"
