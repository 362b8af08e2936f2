"""MLflow helpers against a real SQLite tracking store in a temp folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from dirl import tracking
from dirl.config import load_config


@pytest.fixture
def cfg(params_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: setup() exports the URI
    return load_config(
        params_path,
        overrides={"mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "mlflow.experiment": "dirl-test"},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_setup_creates_experiment_with_artifacts_beside_the_db(cfg, tmp_path):
    import mlflow

    exp_id = tracking.setup(cfg)
    assert tracking.setup(cfg) == exp_id  # idempotent
    exp = mlflow.MlflowClient().get_experiment(exp_id)
    assert exp.name == "dirl-test"
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "dirl-test").as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow.start_run() as run:
        assert run.info.experiment_id == exp_id
        mlflow.log_text("x", "a.txt")
    assert (tmp_path / "mlartifacts" / "dirl-test" / run.info.run_id / "artifacts" / "a.txt").is_file()


def test_unreachable_server_names_uri_and_fix(cfg):
    uri = f"http://127.0.0.1:{_free_port()}"
    cfg.mlflow.tracking_uri = uri
    with pytest.raises(tracking.TrackingError) as e:
        tracking.setup(cfg)
    assert uri in str(e.value) and "mlflow server" in str(e.value) and "make mlflow-ui" in str(e.value)


def test_log_params_flat_is_write_once_and_reports_changes(cfg):
    import mlflow

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        changed = tracking.log_params_flat({"train": {"lr": 1e-4, "betas": [0.9, 0.999]}, "model": {"name": "unet"}})
        assert changed == {}
        again = tracking.log_params_flat({"train": {"lr": 1e-4, "epochs": 5}}, run_id=run.info.run_id)
        assert again == {}
        changed = tracking.log_params_flat({"train": {"lr": 3e-4}})
    params = client.get_run(run.info.run_id).data.params
    assert params == {"train.lr": "0.0001", "train.betas": "[0.9, 0.999]", "model.name": "unet", "train.epochs": "5"}
    assert changed == {"train.lr": ("0.0001", "0.0003")}


def test_log_params_flat_without_run_is_an_error(cfg):
    tracking.setup(cfg)
    with pytest.raises(tracking.TrackingError, match="no active MLflow run"):
        tracking.log_params_flat({"a": 1})


def test_start_child_run_nests_under_parent(cfg):
    import mlflow

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    parent = client.create_run(mlflow.get_experiment_by_name("dirl-test").experiment_id, run_name="parent")
    with tracking.start_child_run(parent.info.run_id, "trial-0", tags={"trial": "0"}) as child:
        mlflow.log_metric("val_iou", 1.0, step=1)
    got = client.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.tags["trial"] == "0" and got.info.run_name == "trial-0"


def test_dvc_lock_hashes(tmp_path):
    assert tracking.dvc_lock_hashes(tmp_path / "absent.lock") == {}
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\n"
        "stages:\n"
        "  preprocess:\n"
        "    cmd: dirl preprocess\n"
        "    deps:\n"
        "    - path: params.yaml\n"
        "      md5: aaa\n"
        "    outs:\n"
        "    - path: data/shards\n"
        "      hash: md5\n"
        "      md5: 0123abcd.dir\n"
        "      size: 10\n"
        "  train:\n"
        "    cmd: dirl train\n"
        "    outs:\n"
        "    - path: results/train/model.pt\n"
        "      md5: ffee\n"
    )
    assert tracking.dvc_lock_hashes(lock) == {
        "preprocess:data/shards": "0123abcd.dir",
        "train:results/train/model.pt": "ffee",
    }
    lock.write_text("stages: [unclosed\n")
    with pytest.raises(tracking.TrackingError, match="dvc.lock"):
        tracking.dvc_lock_hashes(lock)


def test_git_commit_and_provenance_tags(tmp_path):
    assert tracking.git_commit(tmp_path) == ""  # not a repository
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, env=env, check=True, capture_output=True)  # noqa
    run("init", "-q")
    (tmp_path / "f.txt").write_text("1")
    run("add", "f.txt")
    run("commit", "-q", "-m", "init")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == sha
    (tmp_path / "f.txt").write_text("2")
    assert tracking.git_commit(tmp_path) == f"{sha}-dirty"

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"dataset_hash": "cafe"}))
    tags = tracking.provenance_tags(tmp_path, data_dirs=[shards, tmp_path / "missing"])
    assert {k: v for k, v in tags.items() if not k.startswith("mlflow.")} == {
        "git_commit": f"{sha}-dirty",
        "data.shards.dataset_hash": "cafe",
    }
    # MLflow's own source and git tags, which its UI shows as "Source" and the commit
    assert tags["mlflow.source.git.commit"] == sha and tags["mlflow.source.git.dirty"] == "true"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and "mlflow.user" in tags
    assert "mlflow.source.git.repoURL" not in tags  # no remote: no URL invented
    run("remote", "add", "origin", "https://example.com/team/dirl.git")
    assert tracking.source_tags(tmp_path)["mlflow.source.git.repoURL"] == "https://example.com/team/dirl.git"


def test_flatten():
    assert tracking.flatten({"a": {"b": {"c": 1}, "d": None}, "e": [1, 2]}) == {
        "a.b.c": "1",
        "a.d": "None",
        "e": "[1, 2]",
    }
    assert len(tracking.flatten({"long": "x" * 10000})["long"]) == tracking.PARAM_VALUE_MAX
