# Two commands on a fresh machine: `make repro` (whole pipeline) and `make test` (test suite).
# Both create .venv and install the pinned dependencies first when needed.

SHELL := /bin/bash
VENV ?= .venv
# The Python that creates .venv: the first of python3.11, python3.12 and python3.13 on PATH
# (`make test PYTHON_BOOTSTRAP=python3.12` picks one).
PYTHON_BOOTSTRAP ?= $(firstword $(foreach version,3.11 3.12 3.13,$(shell command -v python$(version) 2>/dev/null)))
STAMP := $(VENV)/.installed-stamp
DATASET_DIR := /usr/share/datasets/fashion-mnist
# Largest allowed difference between reproduced and reported test accuracy (0.005 = 0.5 points).
TOLERANCE ?= 0.005
# The quick profile's 2,000-image test set moves 0.05 points per image: allow a little more.
QUICK_TOLERANCE ?= 0.01
# Port of `make ui` (bound to 127.0.0.1 only).
MLFLOW_PORT ?= 5000
# Extra options of `make bench`, e.g. BENCH_ARGS="--steps 64 --repeats 5" (python -m benchmarks.train_throughput -h).
BENCH_ARGS ?=
# Extra options of `make bench-startup`, e.g. STARTUP_ARGS="--rounds 5 --baseline main" (python -m benchmarks.startup -h).
STARTUP_ARGS ?=
# Extra options of `make bench-serve`, e.g. SERVE_BENCH_ARGS="--seconds 5 --baseline main" (python -m benchmarks.serve_load -h).
SERVE_BENCH_ARGS ?=
# Port of `make serve`, the trained model's HTTP endpoint (bound to 127.0.0.1 only; 0 picks a free port).
SERVE_PORT ?= 5001
# The model `make serve` serves: empty for data/model/model.keras, or a registered one, models:/fashion-cnn@champion.
MODEL ?=
# Options of `make promote` (python -m fashion_cnn.tools.promote -h): --best, --version N, --list, --alias NAME.
PROMOTE_ARGS ?= --best
# Stage commands in dvc.yaml run `python`: make it the project's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup dataset browser repro test test-slow reproduce reproduce-quick bench bench-startup bench-serve race race-spread \
	recipe-sweep recipe-report recipe-finalist reproduce-recipe ui compare backup-runs serve promote docs deps lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(VENV)/bin/python || test -n "$(PYTHON_BOOTSTRAP)" || \
		{ echo "error: no python3.11, python3.12 or python3.13 on PATH (set PYTHON_BOOTSTRAP)"; exit 1; }
	@test -x $(VENV)/bin/python || { echo "creating $(VENV) with $$($(PYTHON_BOOTSTRAP) --version) ($(PYTHON_BOOTSTRAP))"; \
		$(PYTHON_BOOTSTRAP) -m venv $(VENV); }
	@echo "$(VENV): $$($(VENV)/bin/python --version)"
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) dataset browser ## Create .venv and install the pinned dependencies (and the offline dataset and browser where possible)

dataset: ## Install Debian's dataset-fashion-mnist (a local mirror) when root with apt; skipped elsewhere
	@if [ -d $(DATASET_DIR) ]; then echo "local Fashion-MNIST mirror: $(DATASET_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
		&& echo "installed $(DATASET_DIR)" || echo "dataset-fashion-mnist not installed: the download stage will use HTTP mirrors"; \
	else echo "no root or apt: the download stage will use HTTP mirrors"; fi

browser: ## Install Debian's chromium (the MLflow UI test's headless browser) when root with apt; skipped elsewhere
	@if command -v chromium >/dev/null; then echo "headless browser: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null \
		&& echo "installed chromium" || echo "chromium not installed: the MLflow UI browser test will be skipped"; \
	else echo "no root or apt: the MLflow UI browser test will be skipped unless chromium is installed"; fi

repro: setup ## Run the whole pipeline (dvc repro)
	dvc repro

test: setup ## Run the test suite (under 10 minutes on 2 cores; the slow end-to-end tests are in test-slow)
	pytest -m "not slow"

test-slow: setup ## Run the slow end-to-end tests: real training runs, real dvc repro, the quick reproduction
	pytest -m slow

reproduce: setup ## Rerun the committed pipeline in a clean copy; fail unless it reproduces reports/metrics.json
	python -m fashion_cnn.tools.reproduce --profile default --tolerance $(TOLERANCE)

reproduce-quick: setup ## The same for the few-minute quick profile (reports/quick/metrics.json)
	python -m fashion_cnn.tools.reproduce --profile quick --tolerance $(QUICK_TOLERANCE)

bench: setup ## Time training vs the seed's Keras code, the train stage, dvc repro (reports/benchmarks.json, docs/performance.md; ~12 min)
	python -m benchmarks.train_throughput $(BENCH_ARGS)
	python -m benchmarks.table --doc docs/performance.md

bench-startup: setup ## dvc repro of the quick profile from nothing, a baseline commit vs the working tree, per stage (reports/startup.json, docs/performance.md; run alone)
	python -m benchmarks.startup $(STARTUP_ARGS)

bench-serve: setup ## Today's model server (a baseline commit) vs this one under 1-64 concurrent clients and one 1,000-image request (reports/serve_bench.json, docs/serving.md; ~4 min; run alone)
	python -m benchmarks.serve_load $(SERVE_BENCH_ARGS)

race: setup ## Time the seed recipe and each preset of conf/race.yaml side by side (reports/race.json, race.png; 26 min on 2 cores; run alone)
	python -m fashion_cnn.tools.race

race-spread: setup ## Train and test the race winner with conf/race.yaml's extra seeds; its spread goes into reports/race.json (12 min)
	python -m fashion_cnn.tools.race --spread

recipe-sweep: setup ## The sweeps of conf/race.yaml: Hydra multiruns of the train stage, validation only (about an hour)
	python -m fashion_cnn.tools.race --sweep

recipe-report: setup ## reports/recipe/sweep.csv and frontier.png from the recipe's MLflow runs
	python -m fashion_cnn.tools.sweep_report

recipe-finalist: setup ## Train and test the race winner (conf/race.yaml) once in a clean copy; record reports/recipe/metrics.json
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db python -m fashion_cnn.tools.reproduce --profile recipe --record

reproduce-recipe: setup ## Rerun the race winner (conf/race.yaml) in a clean copy; fail unless it reproduces reports/recipe/metrics.json
	python -m fashion_cnn.tools.reproduce --profile recipe --tolerance $(TOLERANCE)

ui: setup ## Serve the MLflow UI for the project's own store on http://127.0.0.1:$MLFLOW_PORT (default 5000); prints the runs tables' addresses
	python -m fashion_cnn.tools.ui --port $(MLFLOW_PORT)

compare: setup ## Table of the latest training runs: params that differ, test accuracy, epoch time
	python -m fashion_cnn.tools.compare --last 10

backup-runs: setup ## Back up the run history (mlflow.db with SQLite's online backup, and mlartifacts/) to backups/runs-<time>; restoring: docs/tracking.md
	python -m fashion_cnn.tools.backup_runs

serve: setup ## Serve data/model/model.keras, or MODEL=models:/<name>@<alias>, (refused if it carries code) on http://127.0.0.1:$SERVE_PORT (default 5001): POST raw 28x28 pixels 0-255 as JSON to /invocations
	python -m fashion_cnn.tools.serve --port $(SERVE_PORT) $(if $(MODEL),--model $(MODEL))

promote: setup ## Point the registered model's alias champion at the best version by validation accuracy (PROMOTE_ARGS="--version 3", "--list")
	python -m fashion_cnn.tools.promote $(PROMOTE_ARGS)

.PHONY: docs
docs: setup ## Regenerate docs/params.md (params schema), docs/reliability.md (tests' markers) and the README's and docs' numbers (reports/)
	python -m fashion_cnn.tools.params_doc
	python -m tests.reliability_doc
	python -m fashion_cnn.tools.report_docs

deps: setup ## Rewrite each stage's code deps in dvc.yaml from its imports (tests/test_dvc_deps.py checks them)
	python tests/test_dvc_deps.py

lint: setup ## ruff check and format check
	ruff check . && ruff format --check .

format: setup ## Format the code with ruff
	ruff format . && ruff check --fix .

clean: ## Remove the virtual environment (DVC outputs stay; `dvc gc` manages the cache)
	rm -rf $(VENV)
