"""The tune stage: search-space parsing, trial planning, the ASHA rule, and real searches on a local Ray.

The searches share one local Ray (2 CPUs) and one tiny shard set (64x64 synthetic composites: the
``shards`` fixture of conftest); each trial trains the UNet baseline at 64x64 for one 2-step epoch, so a trial
costs mostly Ray Train's start-up (~20-30 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dirl.cluster import plan_trials
from dirl.config import ConfigError, load_config
from dirl.stages.tune import run as tune
from dirl.train.search import make_scheduler, plan_search, trial_config
from dirl.train.search_space import canonical_key, check_search_space, parse_search_space
from helpers.paths import PARAMS, ROOT
from helpers.training import tiny_train_cfg


def tune_cfg(tmp: Path, **overrides):
    """params.yaml shrunk to seconds-long trials writing under ``tmp`` (no Train-level retries)."""
    base = {
        "model.input_size": 64,
        "cluster.max_failures": 0,
        "train.lr": None,
        "train.weight_decay": None,
        "tune.enabled": True,
        "tune.num_samples": 2,
        "tune.epochs": 1,
        "cluster.max_concurrent_trials": 2,
        "tune.metric": "val_iou",
        "tune.search_space": {"lr": {"loguniform": [3e-4, 3e-3]}, "weight_decay": {"choice": [0.0, 1e-4]}},
    }
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
    parsed = parse_search_space(
        {
            "lr": {"loguniform": ["3e-5", 3e-4]},
            "model.name": {"choice": ["unet", "dirl"]},
            "batch_size": {"randint": [2, 9]},
            "input_size": {"grid": [64, 128]},
        }
    )
    assert parsed == {
        "train.lr": ("loguniform", [3e-5, 3e-4]),
        "model.name": ("choice", ["unet", "dirl"]),
        "train.batch_size": ("randint", [2, 9]),
        "model.input_size": ("grid", [64, 128]),
    }


@pytest.mark.parametrize(
    "space, match",
    [
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
    ],
)
def test_bad_search_space_names_the_key(space, match):
    with pytest.raises(ConfigError, match=match):
        parse_search_space(space)


def test_trial_config_sets_sampled_values_and_validates_them(tmp_path):
    import numpy as np

    cfg = tune_cfg(tmp_path)
    trial = trial_config(
        cfg, {"train.lr": np.float64(2e-4), "train.batch_size": np.int64(3), "model.name": "dirl_lite"}, epochs=3
    )
    assert trial.train.lr == 2e-4 and type(trial.train.batch_size) is int and trial.train.batch_size == 3
    assert trial.model.name == "dirl_lite" and trial.train.epochs == 3 and trial.train.val_every == 1
    assert not trial.train.use_tune_best and cfg.train.epochs == 2  # the input config is untouched
    with pytest.raises(ConfigError, match="model.input_size = 72 must be a multiple of 16"):
        trial_config(cfg, {"model.input_size": 72}, epochs=1)


def test_plan_trials_runs_one_at_a_time_on_small_clusters(tmp_path):
    cfg = tune_cfg(
        tmp_path, **{"cluster.max_concurrent_trials": 4, "cluster.cpus_per_worker": 0.5, "cluster.num_workers": 1}
    )
    small = plan_trials(cfg, {"CPU": 2.0})
    assert small.max_concurrent == 1 and small.share == {"CPU": 2.0, "GPU": 0.0} and small.notes
    big = plan_trials(cfg, {"CPU": 16.0})
    assert big.max_concurrent == 4 and big.share["CPU"] == 4.0 and not big.notes
    cfg = tune_cfg(
        tmp_path, **{"cluster.max_concurrent_trials": 8, "cluster.cpus_per_worker": 2.0, "cluster.num_workers": 2}
    )
    tight = plan_trials(cfg, {"CPU": 16.0})  # a trial needs 2 x 2 CPUs + 0.5 for Ray Data + its driver
    assert tight.max_concurrent == 3 and tight.share["CPU"] * 3 <= 16.0
    cfg = tune_cfg(tmp_path, **{"cluster.max_concurrent_trials": 8, "cluster.use_gpu": True, "cluster.num_workers": 1})
    assert plan_trials(cfg, {"CPU": 64.0, "GPU": 2.0}).max_concurrent == 2


def test_asha_stops_a_weak_trial_at_a_rung_but_never_at_the_last_epoch(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    cfg = tune_cfg(tmp_path, **{"tune.epochs": 4, "tune.grace_period": 1, "tune.reduction_factor": 2})
    ours = make_scheduler(cfg)
    plain = AsyncHyperBandScheduler(
        time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, stop_last_trials=False
    )
    actions = {}
    for name, sched in (("ours", ours), ("plain", plain)):
        sched.set_search_properties("val_iou", "max")
        a, b, c = (SimpleNamespace(trial_id=t) for t in "abc")
        for t in (a, b, c):
            sched.on_trial_add(None, t)
        seq = [
            (a, 1, 10.0),
            (a, 2, 12.0),
            (a, 4, 20.0),  # the leader sets each rung's cutoff
            (b, 1, 5.0),  # below the cutoff at the first rung
            (c, 1, 11.0),
            (c, 2, 13.0),
            (c, 4, 1.0),
        ]  # passes two rungs, then is weak at the last epoch
        actions[name] = [sched.on_trial_result(None, t, {"epoch": e, "val_iou": v}) for t, e, v in seq]
    assert actions["ours"][3] == TrialScheduler.STOP  # early stopping works
    assert actions["ours"][6] == TrialScheduler.CONTINUE and actions["plain"][6] == TrialScheduler.STOP
    assert actions["ours"][:6] == actions["plain"][:6]


def test_disabled_tune_writes_current_values_without_ray(tmp_path, monkeypatch):
    import ray

    from dirl.train.best_yaml import resolve_tuned

    def no_ray(*args, **kwargs):
        raise AssertionError("tune.enabled is false: Ray must not start")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = tune_cfg(tmp_path, **{"tune.enabled": False, "train.lr": 2e-4})
    out = tune(cfg, out_dir=tmp_path / "tune", data_dirs=[tmp_path / "absent"], root=tmp_path)
    assert out["skipped"] and out["trials"] == 0
    best = yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())
    # every tuned key with the value train uses: the explicit lr, the default weight decay; nothing searched
    assert best["train"] == {"lr": 2e-4, "weight_decay": 1e-4, "lam": 1.0}
    assert best["tune"]["skipped"] and best["tune"]["searched"] == []
    summary = json.loads((tmp_path / "tune" / "summary.json").read_text())
    assert summary["skipped"] and summary["reason"] == "tune.enabled is false"
    assert load_config(tmp_path / "tune" / "config.yaml").tune.enabled is False
    resolved, sources = resolve_tuned(cfg, tmp_path / "tune" / "best.yaml")  # what the train stage does
    assert resolved.train.lr == 2e-4 and sources == {
        "train.lr": "params.yaml",
        "train.weight_decay": "default",
        "train.lam": "params.yaml",
    }
    assert not (tmp_path / "mlflow.db").exists() and not ray.is_initialized()


# ----------------------------------------------------------------------------- real searches on local Ray


@pytest.fixture(scope="module")
def searched(ray_local, shards, tmp_path_factory):
    """A 2-trial search over lr (loguniform) and weight_decay (choice); cluster.max_concurrent_trials 2 on 2 CPUs."""
    tmp = tmp_path_factory.mktemp("tune")
    console = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(console):
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tune_cfg(tmp)
        out = tune(cfg, out_dir=tmp / "out", data_dirs=[shards], root=tmp)
    return {"tmp": tmp, "cfg": cfg, "out": out, "console": console.getvalue()}


def test_one_console_line_per_finished_trial(searched):
    lines = [ln for ln in searched["console"].splitlines() if ln.startswith("tune: trial ")]
    assert [ln.split()[2] for ln in lines] == ["1/2", "2/2"], searched["console"]
    ids = {t["trial_id"] for t in searched["out"]["trials_detail"]}
    for ln in lines:
        assert ln.split()[3] in ids and " ok " in ln and "lr=" in ln and "val_iou" in ln
    assert "Trial Status" not in searched["console"] and "\x1b[" not in searched["console"]


def test_search_writes_best_summary_and_trials(searched):
    from dirl.train.best_yaml import resolve_tuned

    tmp, out = searched["tmp"], searched["out"]
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["trials_ok"] == 2 and summary["trials_failed"] == 0
    assert summary["max_concurrent"] == 1  # derived from the 2-CPU cluster, not cluster.max_concurrent_trials
    assert summary["metric"] == "val_iou" and 0.0 <= summary["best_value"] <= 100.0 and summary["seconds"] > 0
    search = Path(summary["experiment_path"])  # Tune's records stay, the trials' checkpoints are gone
    assert search.is_dir() and not list(search.glob("train-*")) and not list(search.rglob("epoch-*"))
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
    assert best["tune"]["searched"] == ["train.lr", "train.weight_decay"]
    merged, sources = resolve_tuned(load_config(PARAMS), tmp / "out" / "best.yaml")
    assert merged.train.lr == best["train"]["lr"] and merged.train.weight_decay == best["train"]["weight_decay"]
    assert sources["train.lr"] == sources["train.weight_decay"] == "tune"
    assert load_config(tmp / "out" / "config.yaml").tune.num_samples == 2
    assert out["best"] == {"train.lr": best["train"]["lr"], "train.weight_decay": best["train"]["weight_decay"]}
    # the best trial's lead over the other, against the noise of a mean over the validation images
    assert summary["margin"] >= 0 and summary["n_val"] > 0 and summary["beyond_noise"] in (True, False)
    assert summary["warmup_steps"] <= summary["trial_steps"] / 4  # every trial ran past its warm-up


def test_search_logs_a_parent_run_with_one_child_run_per_trial(searched):
    tmp, out = searched["tmp"], searched["out"]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, children = child_runs(uri, out["parent_run_id"])
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    assert parent.data.metrics["val/best_IoU"] == pytest.approx(out["best_value"])
    assert parent.data.tags["trials_ok"] == "2" and not any(k.startswith("trials_") for k in parent.data.metrics)
    assert parent.data.params["best.train.lr"] == str(out["best"]["train.lr"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "best.yaml",
        "summary.json",
        "trials.csv",
        "config.yaml",
    }
    rows = {r["trial_id"]: r for r in read_trials(tmp / "out" / "trials.csv")}
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(rows)
    for run in children:
        row = rows[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED" and row["mlflow_run_id"] == run.info.run_id
        assert run.data.params["train.lr"] == row["train.lr"]  # one value per key: sampled == logged by the worker
        assert run.data.params["model.name"] == "unet" and run.data.params["train.epochs"] == "1"
        # source, user and data like every other run; the best trial marked as such
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"]
        assert {d.dataset.name.rsplit("-", 1)[-1] for d in run.inputs.dataset_inputs} == {"train", "val"}
        assert (run.data.tags.get("tune.best") == "true") == (run.data.tags["trial_id"] == out["best_trial"])
        history = client.get_metric_history(run.info.run_id, "val/IoU")
        assert [m.step for m in history] == [1] and history[0].value == pytest.approx(float(row["val_iou"]), abs=1e-3)
    # trials ran one at a time: each trial's run closed before the next one opened
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert spans[0][1] <= spans[1][0]


@pytest.mark.slow  # fault injection: ~50 s on 2 cores
def test_a_failing_trial_is_recorded_and_the_search_goes_on(ray_local, shards, tmp_path, monkeypatch):
    """``train.weight_decay`` 1e300 passes the config check (a number >= 0) but overflows float32 in the first
    optimizer step: that trial's worker raises on the non-finite loss, the other one trains."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tune_cfg(tmp_path, **{"tune.num_samples": 1, "tune.search_space": {"weight_decay": {"grid": [0.0, 1e300]}}})
    out = tune(cfg, out_dir=tmp_path / "out", data_dirs=[shards], root=tmp_path)
    assert out["trials"] == 2 and out["trials_ok"] == 1 and out["trials_failed"] == 1
    rows = {r["train.weight_decay"]: r for r in read_trials(tmp_path / "out" / "trials.csv")}
    bad = rows["1e+300"]
    assert bad["status"] == "failed" and "non-finite training loss" in bad["error"]
    assert bad["val_iou"] == "" and rows["0.0"]["status"] == "ok" and rows["0.0"]["val_iou"]
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert best["train"]["weight_decay"] == 0.0 and best["tune"]["trial_id"] == rows["0.0"]["trial_id"]
    assert best["train"]["lr"] == 1e-4 and best["tune"]["searched"] == ["train.weight_decay"]  # lr: default

    client, children = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", out["parent_run_id"])
    by_wd = {r.data.params.get("train.weight_decay"): r for r in children}
    assert set(by_wd) == {"0.0", "1e+300"}
    failed = by_wd["1e+300"]
    assert failed.info.status == "FAILED" and "non-finite training loss" in failed.data.tags["error"]
    assert failed.data.tags["tune.status"] == "failed" and by_wd["0.0"].info.status == "FINISHED"
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_trial_whose_workers_raise_is_recorded(ray_local, shards, tmp_path, monkeypatch):
    """A loss weight of 1e300 passes the config check but makes the first loss non-finite in float32: the trial's
    Ray Train worker raises inside fit()."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tune_cfg(
        tmp_path, **{"tune.num_samples": 1, "train.lam": None, "tune.search_space": {"lam": {"grid": [1.0, 1e300]}}}
    )
    out = tune(cfg, out_dir=tmp_path / "out", data_dirs=[shards], root=tmp_path)
    rows = {r["train.lam"]: r for r in read_trials(tmp_path / "out" / "trials.csv")}
    assert rows["1e+300"]["status"] == "failed" and "non-finite training loss" in rows["1e+300"]["error"]
    assert rows["1.0"]["status"] == "ok" and out["best"] == {"train.lam": 1.0}
    _, children = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", out["parent_run_id"])
    failed = [r for r in children if r.data.params.get("train.lam") == "1e+300"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "non-finite training loss" in failed[0].data.tags["error"]


# ----------------------------------------------------------------------------- tuned keys: null = tune's value


def test_plan_search_skips_keys_set_explicitly(tmp_path, capsys, monkeypatch):
    """`dvc exp run -S train.lr=3e-4`: lr is not searched (the explicit value wins); with no key left, no search."""
    import ray

    space, notes = plan_search(tune_cfg(tmp_path))
    assert list(space) == ["train.lr", "train.weight_decay"] and notes == []
    space, notes = plan_search(tune_cfg(tmp_path, **{"train.lr": 3e-4}))
    assert space == {"train.weight_decay": ("choice", [0.0, 1e-4])}
    assert len(notes) == 1 and "train.lr = 0.0003 is set in params.yaml: not searched" in notes[0]

    def no_ray(*args, **kwargs):
        raise AssertionError("nothing to search: Ray must not start")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = tune_cfg(tmp_path, **{"train.lr": 3e-4, "train.weight_decay": 0.0})
    out = tune(cfg, out_dir=tmp_path / "tune", data_dirs=[tmp_path / "absent"], root=tmp_path)
    assert out["skipped"] and out["reason"] == "every key of tune.search_space is set in params.yaml"
    assert "train.weight_decay = 0.0 is set in params.yaml" in capsys.readouterr().err
    best = yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())
    assert best["train"] == {"lr": 3e-4, "weight_decay": 0.0, "lam": 1.0} and best["tune"]["searched"] == []


@pytest.mark.parametrize(
    "space",
    [{"model.input_size": {"grid": [64, 128]}}, {"batch_size": {"choice": [2, 4]}}, {"lrr": {"choice": [1e-4]}}],
)
def test_only_tuned_keys_can_be_searched(space):
    with pytest.raises(
        ConfigError,
        match=r"params\.yaml: tune\.search_space\..* cannot be searched: the "
        r"searchable keys are train\.lr, train\.weight_decay",
    ):
        check_search_space(space, "params.yaml")
    with pytest.raises(ConfigError, match=r"tune\.search_space\..* cannot be searched"):  # the tune stage's plan too
        plan_search(load_config(PARAMS, overrides={"tune.search_space": space}))


def test_a_bad_search_space_stops_the_tune_stage_before_any_work(tmp_path, capsys, monkeypatch):
    """The config checks only that tune.search_space is a mapping; the tune stage checks its entries before
    running (``dirl tune`` here; ``python -m dirl.stages.tune`` passes the same check to contract.main), and fails
    in one line naming the params file and the dotted key."""
    from dirl import cli
    from dirl.stages import tune as tune_stage

    data = yaml.safe_load(PARAMS.read_text())
    data["tune"]["search_space"] = {"lr": {"loguniform": [0.01, 0.001]}}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(bad)  # a mapping: the config takes it

    def never(*args, **kwargs):
        raise AssertionError("the tune stage ran on a bad search space")

    monkeypatch.setattr(tune_stage, "run", never)
    assert cli.main(["tune", "--params", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{bad}: tune.search_space.lr" in err and "lower bound" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: tune\.search_space\.lr"):
        tune_stage.check(load_config(bad), str(bad))


def test_dvc_yaml_declares_the_tuned_values_as_train_params(tmp_path):
    """train's params include every tuned key of best.yaml, which the tune stage writes in that layout."""
    from dirl.config import TUNED_DEFAULTS
    from dirl.train.best_yaml import train_values, write_best_yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "results/tune" in stages["tune"]["outs"]  # best.yaml is written there
    declared = [p for p in stages["train"]["params"] if isinstance(p, dict)]
    assert declared == [{"results/tune/best.yaml": list(TUNED_DEFAULTS)}]
    cfg = load_config(PARAMS)
    best = write_best_yaml(tmp_path / "best.yaml", train_values(cfg, {"train.lr": 2e-4}), {"searched": ["train.lr"]})
    data = yaml.safe_load(best.read_text())
    for key in TUNED_DEFAULTS:  # DVC reads a dotted param as a path into the nested file
        section, name = key.split(".", 1)
        assert isinstance(data[section][name], float)


DVC_TUNE = """
import sys
from pathlib import Path
from dirl.config import load_config
from dirl.train.search import plan_search
from dirl.train.best_yaml import train_values, write_best_yaml
cfg = load_config("params.yaml")
space, _ = plan_search(cfg)
found = {k: 0.002 for k in space}  # what a search over the null keys found
write_best_yaml(Path("best.yaml"), train_values(cfg, found), {"searched": list(found)})
"""
DVC_TRAIN = """
import json
from dirl.config import load_config
from dirl.train.best_yaml import resolve_tuned
cfg, sources = resolve_tuned(load_config("params.yaml"), "best.yaml")
json.dump({"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}, open("used.json", "w"))
"""


def _dvc_param_values(tree, found=None) -> list[dict]:
    """Every ``params`` mapping in ``dvc exp show --json`` output."""
    found = [] if found is None else found
    if isinstance(tree, dict):
        if isinstance(tree.get("params"), dict):
            found.append(tree["params"])
        for v in tree.values():
            _dvc_param_values(v, found)
    elif isinstance(tree, list):
        for v in tree:
            _dvc_param_values(v, found)
    return found


def test_dvc_shows_tuned_values_and_an_explicit_value_wins(tmp_path):
    """The README's `dvc exp run -S train.lr=...` in a 2-stage repo of the real pattern: tune writes best.yaml,
    train declares its keys as params (the list from the real dvc.yaml) and resolves them as the train stage."""
    import os
    import shutil
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    if not dvc.exists() or not shutil.which("git"):
        pytest.skip("dvc or git is not installed")
    declared = [
        p for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"] if isinstance(p, dict)
    ][0]["results/tune/best.yaml"]
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PYTHONPATH": str(ROOT),
    }

    def run(*cmd) -> str:
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
        return r.stdout

    full = yaml.safe_load(PARAMS.read_text())  # a params file holds every section
    full["train"].update(lr=None, weight_decay=None)
    full["tune"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    (repo / "tune.py").write_text(DVC_TUNE)
    (repo / "train.py").write_text(DVC_TRAIN)
    py = sys.executable
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "tune": {"cmd": f"{py} tune.py", "deps": ["tune.py"], "params": ["train"], "outs": ["best.yaml"]},
                    "train": {
                        "cmd": f"{py} train.py",
                        "deps": ["train.py"],
                        "params": ["train", {"best.yaml": declared}],
                        "metrics": [{"used.json": {"cache": False}}],
                    },
                }
            },
            sort_keys=False,
        )
    )
    run("git", "init", "-q")
    run(str(dvc), "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "pipeline")
    run(str(dvc), "repro")
    assert json.loads((repo / "used.json").read_text()) == {"lr": 0.002, "weight_decay": 0.002}  # tune's values
    run("git", "add", "-A")
    run("git", "commit", "-qm", "tuned")

    run(str(dvc), "exp", "run", "-S", "train.lr=0.0003")  # the README's example
    assert json.loads((repo / "used.json").read_text()) == {"lr": 0.0003, "weight_decay": 0.002}
    diff = json.loads(run(str(dvc), "params", "diff", "--json"))
    assert (diff["best.yaml"]["train.lr"]["old"], diff["best.yaml"]["train.lr"]["new"]) == (0.002, 0.0003)
    assert (diff["params.yaml"]["train.lr"]["old"], diff["params.yaml"]["train.lr"]["new"]) == (None, 0.0003)
    shown = _dvc_param_values(json.loads(run(str(dvc), "exp", "show", "--json")))
    best = [
        (p["best.yaml"]["data"]["train"]["lr"], p["best.yaml"]["data"]["train"]["weight_decay"])
        for p in shown
        if "best.yaml" in p
    ]
    assert (0.002, 0.002) in best  # the baseline commit: tune's values
    assert (0.0003, 0.002) in best  # the experiment: the explicit lr, shown as the value used


def test_default_trials_end_past_their_warm_up(params_path):
    """params.yaml's trials (tune.epochs x tune.max_steps_per_epoch steps) warm up over at most a quarter of their
    steps, so that every trial ends at the lr it tests; the train stage keeps train.warmup_steps."""
    from dirl.config import load_config
    from dirl.train.epoch import lr_factor
    from dirl.train.search import TRIAL_WARMUP_FRACTION, trial_warmup

    cfg = load_config(params_path)
    steps = cfg.tune.epochs * cfg.tune.max_steps_per_epoch
    trial = trial_config(cfg, {"train.lr": 2e-3}, cfg.tune.epochs)
    assert trial.train.warmup_steps <= TRIAL_WARMUP_FRACTION * steps < cfg.train.warmup_steps  # 15 of 60, not 100
    warm = [min(1.0, (k + 1) / trial.train.warmup_steps) if trial.train.warmup_steps else 1.0 for k in range(steps)]
    assert warm[trial.train.warmup_steps - 1] == 1.0 and sum(w == 1.0 for w in warm) >= 0.75 * steps
    assert lr_factor(trial.train.warmup_steps - 1, cfg.tune.max_steps_per_epoch, trial) > 0.5  # past the ramp
    # without tune.max_steps_per_epoch the trial's length comes from the training composites
    whole = load_config(params_path, overrides={"tune.max_steps_per_epoch": 0})
    assert trial_config(whole, {}, 2, steps_per_epoch=30).train.warmup_steps == 15
    assert trial_config(whole, {}, 2).train.warmup_steps == whole.train.warmup_steps  # length unknown: as set
    assert trial_warmup(10, 1, 1000) == 10 and trial_warmup(100, 1, 60) == 15


def test_tune_summary_says_whether_the_best_margin_exceeds_the_noise():
    from dirl.summary import margin_line
    from dirl.train.search import margin_verdict

    def trial(i, best, status="ok"):
        return {"trial_id": f"abc_0000{i}", "status": status, "best": best}

    close = [trial(1, 25.23), trial(2, 25.29), trial(3, 80.0, "failed")]
    v = margin_verdict(close, "val_iou", 12)
    assert v["runner_up"] == "abc_00001" and v["margin"] == pytest.approx(0.06)
    assert v["noise"] == pytest.approx(100 / (2 * 12**0.5)) and v["beyond_noise"] is False
    line = margin_line({"metric": "val_iou", "n_val": 12, **v})
    assert (
        line == "margin 0.06 val_iou over trial 00001, within noise (up to +-14.43 for a mean over 12 validation "
        "images)"
    )
    far = margin_verdict([trial(1, 25.0), trial(2, 40.0)], "val_iou", 1000)
    assert far["beyond_noise"] is True and "beyond noise" in margin_line({"metric": "val_iou", "n_val": 1000, **far})
    assert margin_verdict([trial(1, 1.0), trial(2, 0.5)], "val_loss", 50)["beyond_noise"] is None  # no range
    assert margin_verdict([trial(1, 25.0)], "val_iou", 12)["margin"] is None and margin_line({"margin": None}) == ""
