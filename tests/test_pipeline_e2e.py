"""`dvc repro` of the smoke profile in a temporary git repository holding this working tree.

Real DVC, real git, real Ray and a real MLflow SQLite store: the whole pipeline runs, a second `dvc repro`
does nothing, one changed parameter re-runs only its stages, `dvc exp run -S` works, and `dvc push` / `dvc pull`
through the local remote hands the outputs to a fresh clone without recomputing them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@localhost", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@localhost", DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0",
               MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DIRL_STORAGE_PATH", None)
    return env


def sh(*args, cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def _copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), without outputs or the venv."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    work = base / "dirl"
    work.mkdir()
    _copy_tree(work)
    shutil.copy(work / "params" / "smoke.yaml", work / "params.yaml")
    sh("git", "init", "-q", "-b", "main", cwd=work)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "smoke", cwd=work)
    return work


@pytest.fixture(scope="module")
def first_repro(repo):
    return sh(str(BIN / "dvc"), "repro", cwd=repo, timeout=1200)


def test_repro_runs_every_stage_and_writes_outputs(repo, first_repro):
    assert _ran(first_repro) == {"ingest", "preprocess", "synthesize", "tune", "train", "evaluate", "register"}
    metrics = json.loads((repo / "results/evaluate/metrics.json").read_text())
    assert {"model", "centre_prior"} <= set(metrics["test"])
    model = json.loads((repo / "results/register/model.json").read_text())
    assert model["model_uri"].startswith("models:/") and model["alias"] == "challenger"
    assert (repo / "results/train/model.pt").stat().st_size > 1_000_000
    assert yaml.safe_load((repo / "results/tune/best.yaml").read_text())
    shown = sh(str(BIN / "dvc"), "metrics", "show", "--json", cwd=repo)
    assert "results/evaluate/metrics.json" in shown


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
