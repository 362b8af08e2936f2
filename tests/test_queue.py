"""Experiments in flight at once: `dvc exp run --queue` + `dvc queue start` with tracking and checkpoints intact.

DVC runs a queued experiment in a temporary copy of the repository (``.dvc/tmp/exps/...``) and throws its
git-ignored files away afterwards. The default MLflow store (``mlflow.db``) and ``ray_results`` therefore resolve to
the repository that queued it (``dirl.workspace.state_root``): two queued smoke experiments with different
``train.lr`` both end up as MLflow runs with their own params and metrics, their checkpoints outlive the copies, and
`dvc exp show` lists both. Slow: two smoke pipelines, about 4-6 minutes on 2 cores.
"""

from __future__ import annotations

import json
import time

import pytest

from helpers.repo import BIN, make_repo, sh

pytestmark = pytest.mark.slow
LRS = ("0.0011", "0.0023")


def _queue_done(work) -> bool:
    status = sh(str(BIN / "dvc"), "queue", "status", cwd=work)
    return not any(word in status for word in ("Queued", "Running"))


def test_two_queued_experiments_are_tracked_apart(tmp_path):
    work = make_repo(tmp_path / "dirl", "smoke")
    dvc = str(BIN / "dvc")
    for lr in LRS:
        sh(dvc, "exp", "run", "--queue", "-S", f"train.lr={lr}", "-S", "tune.enabled=false", cwd=work)
    sh(dvc, "queue", "start", "-j", "1", cwd=work)
    deadline = time.monotonic() + 1500
    while not _queue_done(work):
        assert time.monotonic() < deadline, sh(dvc, "queue", "status", cwd=work)
        time.sleep(5)
    status = sh(dvc, "queue", "status", cwd=work)
    assert status.count("Success") == 2, status

    # both experiments in `dvc exp show`, each with its own lr
    shown = json.loads(sh(dvc, "exp", "show", "--json", cwd=work))
    lrs = set()
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                params = ((r.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {})
                lrs.add(str(params.get("train", {}).get("lr")))
    assert {str(float(lr)) for lr in LRS} <= {str(float(x)) for x in lrs if x not in ("None", "")}, shown

    # the MLflow store and the checkpoints are in the repository, not in DVC's thrown-away copies
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dirl")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'train'")
    assert sorted(float(r.data.params["train.lr"]) for r in runs) == sorted(float(lr) for lr in LRS)
    for r in runs:
        assert r.info.status == "FINISHED" and "val/IoU" in r.data.metrics
        assert (work / "ray_results" / r.data.tags["ray_run_name"]).is_dir()
    assert not list((work / ".dvc" / "tmp" / "exps").glob("*/mlflow.db"))
