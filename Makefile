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

.PHONY: install run test test-slow test-all bench mlflow-ui plots profile clean help team-up team-down test-team

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,notebooks]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with test + notebook extras

run: $(STAMP)  ## dvc repro the whole pipeline on the built-in sample
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make run needs a git checkout (dvc repro tracks dvc.lock in git)"; exit 1; }
	$(VENV)/bin/dvc repro
	$(PY) -m dirl.cli summary

test: $(STAMP)  ## fast test suite (CPU, < 20 min on 2 cores)
	$(PY) -m pytest -m "not slow and not team" -q --timeout=900

test-slow: $(STAMP)  ## slow tests: multi-node Ray cluster, mlflow server, fault injection
	$(PY) -m pytest -m "slow and not team" -q --timeout=1800

test-all: $(STAMP)  ## every test
	$(PY) -m pytest -q --timeout=1800

bench: $(STAMP)  ## run the benchmarks (see benchmarks/RESULTS.md)
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_loss.py

mlflow-ui: $(STAMP)  ## browse experiments at http://127.0.0.1:5000 (default SQLite store)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

plots: $(STAMP)  ## render DVC plots offline into dvc_plots/index.html (vega inlined)
	$(VENV)/bin/dvc plots show

profile: $(STAMP)  ## apply params/$(PROFILE).yaml to params.yaml (PROFILE=smoke | photos-cpu | iharmony4-gpu)
	@echo "make profile: changing params.yaml in place with params/$(PROFILE).yaml (undo: git checkout params.yaml)"
	$(PY) -m dirl.cli config --profile $(PROFILE) --write
	@echo "now run: make run (or dvc repro)"

clean:  ## remove every pipeline output and run store (keeps .venv, the DVC cache and the team stack's .team/)
	rm -rf results data/raw data/shards data/synth data/.raw-downloads data/.raw.* data/.shards.* data/.synth.* \
	  ray_results mlflow.db mlartifacts dvc_plots

# ---- team stack (pipeline/team.py): PostgreSQL + S3 server (moto) + mlflow server on 127.0.0.1, state in .team/
TEAM_STAMP := $(VENV)/.installed-team

$(TEAM_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[team]'
	@touch $(TEAM_STAMP)

team-up: $(TEAM_STAMP)  ## start the team stack (PostgreSQL, S3 server, mlflow server); then: source .team/team.env
	$(PY) pipeline/team.py up
	@echo "team stack up: source .team/team.env, then make profile PROFILE=team (or dirl config --profile team --write)"

team-down:  ## stop the team stack started by team-up (by pid); the database stays in .team/
	$(PY) pipeline/team.py down

test-team: $(TEAM_STAMP)  ## the team stack end to end: dvc repro on it, push/pull, predict, racing promotions
	$(PY) -m pytest -m team -q --timeout=1800 tests/test_team.py
