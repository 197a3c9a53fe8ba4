# One entry point for set-up, the main job, the tests and the benchmarks.
# `make setup` is idempotent: it creates .venv and installs the project with pinned versions.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup demo test test-fast bench clean vllm-omni-env

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	# torch first, from the pinned release, so no other build is ever pulled in
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import torch, diffusers, prefect, piq, av, sqlmodel" && touch $(STAMP)

setup: $(STAMP)

# The main job: a small validation experiment on the tiny preset (CPU, SQLite, local Prefect).
demo: setup
	$(BIN)/t2vsim experiment --preset tiny --prompts 20 --out runs/demo

test: setup
	bash scripts/test.sh

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) .prefect runs .pytest_cache

# vLLM-Omni's own environment (pinned; CPU build + the project's platform plugin without a GPU).
vllm-omni-env:
	bash scripts/vllm_omni_env.sh
