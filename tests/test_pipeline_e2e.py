"""`dvc repro` of the smoke profile in a temporary git repository holding this working tree.

Real DVC, real git, real Ray and a real MLflow SQLite store: the whole pipeline runs, a second `dvc repro`
does nothing, one changed parameter re-runs only its stages, `dvc exp run -S` works, and `dvc push` / `dvc pull`
through the local remote hands the outputs to a fresh clone without recomputing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers.repo import BIN, base_env, make_repo
from helpers.repo import ran as _ran
from helpers.repo import sh as run


def sh(*args, cwd: Path, timeout: float = 900) -> str:
    return run(*args, cwd=cwd, env=base_env(DIRL_PROGRESS_EVERY="0"), timeout=timeout)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("e2e") / "dirl", "smoke")


@pytest.fixture(scope="module")
def first_repro(repo):
    return sh(str(BIN / "dvc"), "repro", cwd=repo, timeout=1200)


def test_repro_runs_every_stage_and_writes_outputs(repo, first_repro):
    assert _ran(first_repro) == {"ingest", "preprocess", "synthesize", "tune", "train", "evaluate", "register"}
    scores = json.loads((repo / "results/evaluate/scores.json").read_text())
    assert {"model", "centre_prior"} <= set(scores["test"])
    model = json.loads((repo / "results/register/model.json").read_text())
    assert model["model_uri"].startswith("models:/") and model["alias"] == "challenger"
    # the weights are stored once: register registered the model the train run logged, which carries the test figures
    import mlflow

    run = json.loads((repo / "results/train/run.json").read_text())
    assert model["logged_model_uri"] == f"models:/{run['model_id']}"
    logged = mlflow.MlflowClient(run["tracking_uri"]).get_logged_model(run["model_id"])
    assert {"test/IoU", "test/prior_IoU"} <= {m.key for m in logged.metrics}
    assert (repo / "results/train/model.pt").stat().st_size > 1_000_000
    assert yaml.safe_load((repo / "results/tune/best.yaml").read_text())
    shown = sh(str(BIN / "dvc"), "metrics", "show", "--json", cwd=repo)
    assert "results/evaluate/metrics.json" in shown and "results/evaluate/prior.json" in shown


def test_metrics_show_fits_160_columns(repo, first_repro):
    """The default `dvc metrics show` is a table a person reads: at most 160 columns, the test IoU in it."""
    table = sh(str(BIN / "dvc"), "metrics", "show", cwd=repo)
    lines = [ln for ln in table.splitlines() if ln.strip()]
    assert lines and "test.IoU" in lines[0], table
    assert max(len(ln) for ln in lines) <= 160, table


def test_console_is_quiet_and_shows_progress(first_repro):
    """Off a terminal (a DVC log) training prints short progress lines and one line per epoch, tune one line per
    trial; no ANSI escapes, no Ray result dicts, no Tune status tables."""
    log = first_repro
    assert "epoch 1/1  step 1/2  loss" in log, log[-3000:]  # a progress line inside the epoch (every step here)
    assert "epoch 1/1  train loss" in log and "tune: trial 1/1" in log
    for noise in ("\x1b[", "Reporting training result", "TrainingReport(", "Trial Status", "Current time:"):
        assert noise not in log, f"{noise!r} in the console log"


def test_second_repro_does_nothing(repo, first_repro):
    log = sh(str(BIN / "dvc"), "repro", cwd=repo)
    assert _ran(log) == set(), log


def test_changed_param_reruns_only_dependent_stages(repo, first_repro):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["grid_items"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = sh(str(BIN / "dvc"), "repro", cwd=repo)
    assert _ran(log) == {"evaluate"}, log
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "grid 2", cwd=repo)


def test_exp_run_with_set_param(repo, first_repro):
    log = sh(str(BIN / "dvc"), "exp", "run", "-S", "evaluate.grid_items=4", cwd=repo)
    assert "Running stage 'evaluate'" in log and "Running stage 'train'" not in log, log
    shown = json.loads(sh(str(BIN / "dvc"), "exp", "show", "--json", cwd=repo).strip().splitlines()[-1])
    exps = [e for head in shown for e in (head.get("experiments") or [])]
    assert exps, shown
    revs = [r for e in exps for r in e.get("revs", [])]
    grids = [r["data"]["params"]["params.yaml"]["data"]["evaluate"]["grid_items"] for r in revs]
    assert 4 in grids, grids


def test_plots_render_offline(repo, first_repro):
    sh(str(BIN / "dvc"), "plots", "show", "-o", "plots_out", cwd=repo)
    page = (repo / "plots_out" / "index.html").read_text()
    assert "<script src=" not in page  # nothing to fetch: vega, vega-lite and vega-embed are inline
    assert "vegaEmbed" in page and all(f'id = "{p}"' in page for p in ("loss", "validation", "precision_recall"))
    assert (repo / "plots_out" / "static" / "workspace_results_evaluate_grid.png").is_file()


def test_push_and_pull_through_local_remote(repo, first_repro, tmp_path):
    remote = tmp_path / "remote"
    sh(str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(remote), cwd=repo)
    sh(str(BIN / "dvc"), "push", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "lock", "--allow-empty", cwd=repo)
    mate = tmp_path / "teammate"
    sh("git", "clone", "-q", str(repo), str(mate), cwd=tmp_path)
    sh(str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(remote), cwd=mate)
    sh(str(BIN / "dvc"), "pull", cwd=mate)
    assert (mate / "data/shards/manifest.json").is_file() and (mate / "results/train/model.pt").is_file()
    status = sh(str(BIN / "dvc"), "status", "ingest", "preprocess", "synthesize", cwd=mate)
    assert "up to date" in status.lower(), status
