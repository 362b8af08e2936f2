# Two commands do all set-up on a fresh machine:
#   make run   - create .venv, install, run `dvc repro` on the built-in sample
#   make test  - create .venv, install, run the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PROFILE ?= smoke

.PHONY: install lock lint run test test-slow test-all bench gpu-check mlflow-ui plots profile clean help team-up team-down test-team

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | column -t -s $$'\t'

# The environment comes from requirements.lock (every package pinned with its sha256; regenerate with `make lock`);
# torch is pinned in pyproject.toml and installed first, from the CPU wheel where the machine has one.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv from requirements.lock and install the package (test + notebook extras)

lock: $(STAMP)  ## regenerate requirements.lock (hashes) from pyproject.toml's pins
	$(VENV)/bin/pip-compile --quiet --generate-hashes --unsafe-package torch --extra test --extra notebooks \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

lint: $(STAMP)  ## ruff (lint + format check), mypy, import layers: seconds
	$(VENV)/bin/ruff check dirl pipeline benchmarks tests
	$(VENV)/bin/ruff format --check dirl pipeline benchmarks tests
	$(VENV)/bin/mypy dirl pipeline
	$(VENV)/bin/lint-imports

run: $(STAMP)  ## dvc repro the whole pipeline on the built-in sample
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make run needs a git checkout (dvc repro tracks dvc.lock in git)"; exit 1; }
	$(VENV)/bin/dvc repro
	$(PY) -m dirl.cli summary

test: lint  ## lint, then the fast test suite (CPU, < 15 min on 2 cores)
	$(PY) -m pytest -m "not slow and not team" -q --timeout=900 --durations=20

test-slow: $(STAMP)  ## slow tests: multi-node Ray cluster, mlflow server, fault injection, notebooks
	$(PY) -m pytest -m "slow and not team" -q --timeout=1800

test-all: $(STAMP)  ## every test
	$(PY) -m pytest -q --timeout=1800

bench: $(STAMP)  ## run the benchmarks (see benchmarks/RESULTS.md)
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_loss.py

gpu-check: $(STAMP)  ## one CUDA machine, < 8 min: dirl at 224 (fp32, bf16), loader, one reference epoch on Ray; tiny without CUDA
	$(PY) benchmarks/gpu_check.py --out results/gpu-check

mlflow-ui: $(STAMP)  ## browse experiments at http://127.0.0.1:5000 (default SQLite store); prints the runs table's URL
	@$(PY) -c "import mlflow; from dirl.tracking import runs_url; \
	  e = mlflow.MlflowClient('sqlite:///$(CURDIR)/mlflow.db').get_experiment_by_name('dirl'); \
	  print('open the runs:', runs_url('http://127.0.0.1:5000', e.experiment_id) if e else 'http://127.0.0.1:5000 (no runs yet: make run first)')"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

plots: $(STAMP)  ## render DVC plots offline into dvc_plots/index.html (vega inlined)
	$(VENV)/bin/dvc plots show

profile: $(STAMP)  ## apply params/$(PROFILE).yaml to params.yaml (PROFILE=smoke | photos-cpu | iharmony4-reference | iharmony4-search)
	@echo "make profile: changing params.yaml in place with params/$(PROFILE).yaml (undo: git checkout params.yaml)"
	$(PY) -m dirl.cli config --profile $(PROFILE) --write
	@echo "now run: make run (or dvc repro)"

clean:  ## remove every pipeline output and run store (keeps .venv, the DVC cache and the team stack's .team/)
	rm -rf results data/raw data/shards data/synth data/.raw-downloads data/.raw.* data/.shards.* data/.synth.* \
	  ray_results mlflow.db mlartifacts dvc_plots

# ---- team stack (pipeline/team.py): PostgreSQL + S3 server (moto) + mlflow server on 127.0.0.1, state in .team/;
# PostgreSQL under pg_ctl, the two servers under honcho (pipeline/team.Procfile)
TEAM_STAMP := $(VENV)/.installed-team

$(TEAM_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[team]'
	@touch $(TEAM_STAMP)

team-up: $(TEAM_STAMP)  ## start the team stack (PostgreSQL, S3 server, mlflow server); then: source .team/team.env
	$(PY) pipeline/team.py up
	@echo "team stack up: source .team/team.env, then make profile PROFILE=team (or dirl config --profile team --write)"

team-down:  ## stop the team stack started by team-up (honcho, then pg_ctl stop); the database stays in .team/
	$(PY) pipeline/team.py down

test-team: $(TEAM_STAMP)  ## the team stack end to end: dvc repro on it, push/pull, predict, racing promotions
	$(PY) -m pytest -m team -q --timeout=1800 tests/test_team.py
