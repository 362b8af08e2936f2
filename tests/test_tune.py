"""The tune stage: search-space parsing, trial planning, the ASHA rule, and real searches on a local Ray.

The searches share one local Ray (2 CPUs) and one tiny shard set (64x64 synthetic composites, see
``test_train.make_shards``); each trial trains the UNet baseline at 64x64 for one 2-step epoch, so a trial
costs mostly Ray Train's start-up (~20-30 s on 2 cores).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dirl.config import ConfigError, load_config
from dirl.train.tune import canonical_key, make_scheduler, parse_search_space, plan_trials, trial_config, tune
from test_train import make_shards, tiny_train_cfg

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def tune_cfg(tmp: Path, **overrides):
    """params.yaml shrunk to seconds-long trials writing under ``tmp`` (no Train-level retries)."""
    base = {"model.input_size": 64, "train.max_failures": 0, "tune.enabled": True, "tune.num_samples": 2,
            "tune.epochs": 1, "tune.max_concurrent": 2, "tune.metric": "val_iou",
            "tune.search_space": {"lr": {"loguniform": [3e-4, 3e-3]}, "weight_decay": {"choice": [0.0, 1e-4]}}}
    base.update(overrides)
    return tiny_train_cfg(PARAMS, tmp, **base)


def read_trials(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def child_runs(uri: str, parent_id: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp_id = client.get_run(parent_id).info.experiment_id
    return client, client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


# ----------------------------------------------------------------------------- no Ray


def test_search_space_keys_map_to_train_and_model_fields():
    assert canonical_key("lr") == "train.lr" and canonical_key("lam") == "train.lam"
    assert canonical_key("input_size") == "model.input_size" and canonical_key("name") == "model.name"
    assert canonical_key("model.name") == "model.name" and canonical_key("train.batch_size") == "train.batch_size"
    parsed = parse_search_space({"lr": {"loguniform": ["3e-5", 3e-4]}, "model.name": {"choice": ["unet", "dirl"]},
                                 "batch_size": {"randint": [2, 9]}, "input_size": {"grid": [64, 128]}})
    assert parsed == {"train.lr": ("loguniform", [3e-5, 3e-4]), "model.name": ("choice", ["unet", "dirl"]),
                      "train.batch_size": ("randint", [2, 9]), "model.input_size": ("grid", [64, 128])}


@pytest.mark.parametrize("space, match", [
    ({"lrr": {"loguniform": [1e-4, 1e-3]}}, r"tune\.search_space\.lrr: unknown key"),
    ({"data.seed": {"choice": [1, 2]}}, r"tune\.search_space\.data\.seed: unknown key"),
    ({"lr": {"loguniform": [0.0, 1e-3]}}, r"tune\.search_space\.lr .*bounds must be > 0"),
    ({"lr": {"uniform": [1e-3, 1e-4]}}, r"tune\.search_space\.lr .*lower bound"),
    ({"lr": {"normal": [0, 1]}}, r"tune\.search_space\.lr = .*loguniform: \[lo, hi\]"),
    ({"lr": [1e-4, 1e-3]}, r"tune\.search_space\.lr = .*not a valid search space"),
    ({"weight_decay": {"choice": []}}, r"tune\.search_space\.weight_decay"),
    ({"batch_size": {"randint": [2.5, 8]}}, r"tune\.search_space\.batch_size .*integers"),
    ({"epochs": {"choice": [1, 2]}}, r"train\.epochs cannot be searched"),
    ({"lr": {"choice": [1e-4]}, "train.lr": {"choice": [1e-3]}}, r"given twice"),
    ({}, r"tune\.search_space must be a non-empty mapping"),
])
def test_bad_search_space_names_the_key(space, match):
    with pytest.raises(ConfigError, match=match):
        parse_search_space(space)


def test_trial_config_sets_sampled_values_and_validates_them(tmp_path):
    import numpy as np

    cfg = tune_cfg(tmp_path)
    trial = trial_config(cfg, {"train.lr": np.float64(2e-4), "train.batch_size": np.int64(3),
                               "model.name": "dirl_lite"}, epochs=3)
    assert trial.train.lr == 2e-4 and type(trial.train.batch_size) is int and trial.train.batch_size == 3
    assert trial.model.name == "dirl_lite" and trial.train.epochs == 3 and trial.train.val_every == 1
    assert not trial.train.use_tune_best and cfg.train.epochs == 2  # the input config is untouched
    with pytest.raises(ConfigError, match="model.input_size = 72 must be a multiple of 16"):
        trial_config(cfg, {"model.input_size": 72}, epochs=1)


def test_plan_trials_runs_one_at_a_time_on_small_clusters(tmp_path):
    cfg = tune_cfg(tmp_path, **{"tune.max_concurrent": 4, "train.cpus_per_worker": 0.5, "train.num_workers": 1})
    small = plan_trials(cfg, {"CPU": 2.0})
    assert small.max_concurrent == 1 and small.share == {"CPU": 2.0, "GPU": 0.0} and small.notes
    big = plan_trials(cfg, {"CPU": 16.0})
    assert big.max_concurrent == 4 and big.share["CPU"] == 4.0 and not big.notes
    cfg = tune_cfg(tmp_path, **{"tune.max_concurrent": 8, "train.cpus_per_worker": 2.0, "train.num_workers": 2})
    tight = plan_trials(cfg, {"CPU": 16.0})  # a trial needs 2 x 2 CPUs + 0.5 for Ray Data + its driver
    assert tight.max_concurrent == 3 and tight.share["CPU"] * 3 <= 16.0
    cfg = tune_cfg(tmp_path, **{"tune.max_concurrent": 8, "train.use_gpu": True, "train.num_workers": 1})
    assert plan_trials(cfg, {"CPU": 64.0, "GPU": 2.0}).max_concurrent == 2


def test_asha_stops_a_weak_trial_at_a_rung_but_never_at_the_last_epoch(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    cfg = tune_cfg(tmp_path, **{"tune.epochs": 4, "tune.grace_period": 1, "tune.reduction_factor": 2})
    ours = make_scheduler(cfg)
    plain = AsyncHyperBandScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2,
                                    stop_last_trials=False)
    actions = {}
    for name, sched in (("ours", ours), ("plain", plain)):
        sched.set_search_properties("val_iou", "max")
        a, b, c = (SimpleNamespace(trial_id=t) for t in "abc")
        for t in (a, b, c):
            sched.on_trial_add(None, t)
        seq = [(a, 1, 10.0), (a, 2, 12.0), (a, 4, 20.0),  # the leader sets each rung's cutoff
               (b, 1, 5.0),  # below the cutoff at the first rung
               (c, 1, 11.0), (c, 2, 13.0), (c, 4, 1.0)]  # passes two rungs, then is weak at the last epoch
        actions[name] = [sched.on_trial_result(None, t, {"epoch": e, "val_iou": v}) for t, e, v in seq]
    assert actions["ours"][3] == TrialScheduler.STOP  # early stopping works
    assert actions["ours"][6] == TrialScheduler.CONTINUE and actions["plain"][6] == TrialScheduler.STOP
    assert actions["ours"][:6] == actions["plain"][:6]


def test_disabled_tune_writes_current_values_without_ray(tmp_path, monkeypatch):
    import ray

    from dirl.train.trainer import apply_tune_best

    def no_ray(*args, **kwargs):
        raise AssertionError("tune.enabled is false: Ray must not start")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = tune_cfg(tmp_path, **{"tune.enabled": False, "train.lr": 2e-4, "model.input_size": 96,
                                "tune.search_space": {"lr": {"loguniform": [1e-5, 1e-3]},
                                                      "input_size": {"choice": [64, 128]}}})
    out = tune(cfg, out_dir=tmp_path / "tune", data_dirs=[tmp_path / "absent"], root=tmp_path)
    assert out["skipped"] and out["trials"] == 0
    best = yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())
    assert best["train"] == {"lr": 2e-4} and best["model"] == {"input_size": 96} and best["tune"]["skipped"]
    summary = json.loads((tmp_path / "tune" / "summary.json").read_text())
    assert summary["skipped"] and summary["reason"] == "tune.enabled is false"
    assert load_config(tmp_path / "tune" / "config.yaml").tune.enabled is False
    other = load_config(PARAMS)  # the train stage merges best.yaml: here it restores the current values
    merged, keys = apply_tune_best(other, tmp_path / "tune" / "best.yaml")
    assert merged.train.lr == 2e-4 and merged.model.input_size == 96 and set(keys) == {"train.lr",
                                                                                    "model.input_size"}
    assert not (tmp_path / "mlflow.db").exists() and not ray.is_initialized()


# ----------------------------------------------------------------------------- real searches on local Ray


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "shards")


@pytest.fixture(scope="module")
def searched(ray_local, shards, tmp_path_factory):
    """A 2-trial search over lr (loguniform) and weight_decay (choice); tune.max_concurrent 2 on 2 CPUs."""
    tmp = tmp_path_factory.mktemp("tune")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tune_cfg(tmp)
        out = tune(cfg, out_dir=tmp / "out", data_dirs=[shards], root=tmp)
    return {"tmp": tmp, "cfg": cfg, "out": out}


def test_search_writes_best_summary_and_trials(searched):
    from dirl.train.trainer import apply_tune_best

    tmp, cfg, out = searched["tmp"], searched["cfg"], searched["out"]
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["trials_ok"] == 2 and summary["trials_failed"] == 0
    assert summary["max_concurrent"] == 1  # derived from the 2-CPU cluster, not tune.max_concurrent
    assert summary["metric"] == "val_iou" and 0.0 <= summary["best_value"] <= 100.0 and summary["seconds"] > 0
    rows = read_trials(tmp / "out" / "trials.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"] and len({r["trial_id"] for r in rows}) == 2
    assert list(rows[0])[:4] == ["trial_id", "status", "train.lr", "train.weight_decay"]
    for r in rows:
        assert 3e-4 <= float(r["train.lr"]) <= 3e-3 and float(r["train.weight_decay"]) in (0.0, 1e-4)
        assert r["epochs"] == "1" and r["val_iou"] and not r["error"]
    best_row = max(rows, key=lambda r: float(r["best_val_iou"]))
    assert float(best_row["best_val_iou"]) == pytest.approx(summary["best_value"], abs=1e-3)

    best = yaml.safe_load((tmp / "out" / "best.yaml").read_text())
    assert best["train"]["lr"] == float(best_row["train.lr"]) and set(best) == {"train", "tune"}
    assert best["tune"]["metric"] == "val_iou" and best["tune"]["value"] == summary["best_value"]
    merged, keys = apply_tune_best(load_config(PARAMS), tmp / "out" / "best.yaml")
    assert merged.train.lr == best["train"]["lr"] and set(keys) == {"train.lr", "train.weight_decay"}
    assert load_config(tmp / "out" / "config.yaml").tune.num_samples == 2
    assert out["best"] == {"train.lr": best["train"]["lr"], "train.weight_decay": best["train"]["weight_decay"]}


def test_search_logs_a_parent_run_with_one_child_run_per_trial(searched):
    tmp, out = searched["tmp"], searched["out"]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, children = child_runs(uri, out["parent_run_id"])
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    assert parent.data.metrics["best_val_iou"] == pytest.approx(out["best_value"])
    assert parent.data.params["best.train.lr"] == str(out["best"]["train.lr"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best.yaml", "summary.json",
                                                                          "trials.csv", "config.yaml"}
    rows = {r["trial_id"]: r for r in read_trials(tmp / "out" / "trials.csv")}
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(rows)
    for run in children:
        row = rows[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED" and row["mlflow_run_id"] == run.info.run_id
        assert run.data.params["train.lr"] == row["train.lr"]  # one value per key: sampled == logged by the worker
        assert run.data.params["model.name"] == "unet" and run.data.params["train.epochs"] == "1"
        history = client.get_metric_history(run.info.run_id, "val_iou")
        assert [m.step for m in history] == [1] and history[0].value == pytest.approx(float(row["val_iou"]),
                                                                                      abs=1e-3)
    # trials ran one at a time: each trial's run closed before the next one opened
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert spans[0][1] <= spans[1][0]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(ray_local, shards, tmp_path, monkeypatch):
    """``model.input_size`` 72 is not a multiple of 16: that trial raises, the other one trains."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tune_cfg(tmp_path, **{"tune.num_samples": 1,
                                "tune.search_space": {"model.input_size": {"grid": [64, 72]}}})
    out = tune(cfg, out_dir=tmp_path / "out", data_dirs=[shards], root=tmp_path)
    assert out["trials"] == 2 and out["trials_ok"] == 1 and out["trials_failed"] == 1
    rows = {r["model.input_size"]: r for r in read_trials(tmp_path / "out" / "trials.csv")}
    assert rows["72"]["status"] == "failed" and "multiple of 16" in rows["72"]["error"]
    assert rows["72"]["val_iou"] == "" and rows["64"]["status"] == "ok" and rows["64"]["val_iou"]
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert best["model"] == {"input_size": 64} and best["tune"]["trial_id"] == rows["64"]["trial_id"]

    client, children = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", out["parent_run_id"])
    by_size = {r.data.params.get("model.input_size"): r for r in children}
    assert set(by_size) == {"64", "72"}
    failed = by_size["72"]
    assert failed.info.status == "FAILED" and "multiple of 16" in failed.data.tags["error"]
    assert failed.data.tags["tune.status"] == "failed" and by_size["64"].info.status == "FINISHED"
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_trial_whose_workers_raise_is_recorded(ray_local, shards, tmp_path, monkeypatch):
    """A batch larger than the training split: the trial's Ray Train worker raises inside fit()."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tune_cfg(tmp_path, **{"tune.num_samples": 1, "tune.search_space": {"batch_size": {"grid": [2, 64]}}})
    out = tune(cfg, out_dir=tmp_path / "out", data_dirs=[shards], root=tmp_path)
    rows = {r["train.batch_size"]: r for r in read_trials(tmp_path / "out" / "trials.csv")}
    assert rows["64"]["status"] == "failed" and "no full batch of 64 rows" in rows["64"]["error"]
    assert rows["2"]["status"] == "ok" and out["best"] == {"train.batch_size": 2}
    _, children = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", out["parent_run_id"])
    failed = [r for r in children if r.data.params.get("train.batch_size") == "64"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "no full batch" in failed[0].data.tags["error"]
