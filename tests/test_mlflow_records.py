"""What MLflow holds is a true record: a registered model's training run is written once, and every evaluation
(the pipeline's, and any later one with another ``--out``) is an MLflow run of its own, linked to the model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from dirl.cli import main
from dirl.stages import register as register_stage
from helpers.lifecycle import make_cfg, make_ihd, make_logged_training, make_workspace
from helpers.paths import PARAMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _artifacts(client, run_id: str, path: str | None = None) -> list[tuple[str, int | None]]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [(f.path, f.file_size)]
    return sorted(out)


def snapshot(client, run_id: str) -> dict:
    """Everything a reader sees of a run: params, tags, metrics and each metric's whole history, artifacts."""
    run = client.get_run(run_id)
    return {
        "status": run.info.status,
        "end_time": run.info.end_time,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": run.data.metrics,
        "history": {
            k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics
        },
        "artifacts": _artifacts(client, run_id),
        "datasets": sorted((d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs),
    }


def model_snapshot(client, model_id: str) -> dict:
    lm = client.get_logged_model(model_id)
    return {
        "metrics": sorted((m.key, m.value, m.run_id, m.dataset_name) for m in lm.metrics or []),
        "artifacts": sorted(f.path for f in client.list_logged_model_artifacts(model_id)),
        "figures": sorted(f.path for f in client.list_logged_model_artifacts(model_id, "evaluation")),
    }


def evaluate_cli(root: Path, out: str, *extra: str) -> None:
    sets = {
        "model.name": "unet",
        "model.input_size": "32",
        "evaluate.batch_size": "4",
        "evaluate.grid_items": "3",
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "register.model_name": "dirl-test",
    }
    args = ["evaluate", "--params", str(PARAMS), "--out", out]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    for e in extra:
        args += ["--set", e]
    assert main(args) == 0


def test_later_evaluations_leave_the_registered_run_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = [str(d) for d in make_workspace(tmp_path)]
    cfg = make_cfg(tmp_path)
    train = tmp_path / "results" / "train"
    run = make_logged_training(cfg, train)
    client = mlflow.MlflowClient(run["tracking_uri"])
    trained = snapshot(client, run["run_id"])

    # the pipeline: evaluate (results/evaluate), then register the model training logged
    evaluate_cli(tmp_path, "results/evaluate")
    info = register_stage.run(
        cfg,
        out_dir=tmp_path / "results" / "register",
        weights=train / "model.pt",
        run_json=train / "run.json",
        metrics_path=tmp_path / "results/evaluate/scores.json",
        shard_dirs=dirs,
    )
    assert info["logged_model_uri"] == f"models:/{run['model_id']}"
    registered = snapshot(client, run["run_id"])
    assert registered == trained  # nothing after training, not even the pipeline's evaluation, writes the run
    model = model_snapshot(client, run["model_id"])
    assert {"test/IoU", "test/prior_IoU"} <= {k for k, *_ in model["metrics"]}
    assert {"evaluation/grid.png", "evaluation/mda.png"} <= set(model["figures"])
    pipeline_eval = json.loads((tmp_path / "results/evaluate/info.json").read_text())["mlflow"]["evaluation_run_id"]
    mv = client.get_model_version("dirl-test", info["version"])
    assert mv.tags["evaluation_run_id"] == pipeline_eval
    assert {m[2] for m in model["metrics"]} == {pipeline_eval} and {m[3] for m in model["metrics"]} == {"test"}

    # two later evaluations with --out, one on an extra set
    ihd = make_ihd(tmp_path / "sets" / "ihd_mini")
    evaluate_cli(tmp_path, str(tmp_path / "adhoc1"), f"evaluate.extra_sets=[{ihd}]")
    evaluate_cli(tmp_path, str(tmp_path / "adhoc2"))
    assert snapshot(client, run["run_id"]) == registered  # metrics, their history, artifacts: unchanged
    assert model_snapshot(client, run["model_id"]) == model  # and the logged model as registered

    # each evaluation is its own finished run, linked to the training run and to the model
    evals = client.search_runs([run["experiment_id"]], f"tags.`dirl.train_run_id` = '{run['run_id']}'")
    ids = {r.info.run_id: r for r in evals}
    adhoc = [
        json.loads((tmp_path / d / "info.json").read_text())["mlflow"]["evaluation_run_id"]
        for d in ("adhoc1", "adhoc2")
    ]
    assert set(ids) == {pipeline_eval, *adhoc} and len(ids) == 3
    for rid, r in ids.items():
        assert r.info.status == "FINISHED" and r.data.tags["dirl.model_id"] == run["model_id"]
        assert [m.model_id for m in client.get_run(rid).inputs.model_inputs] == [run["model_id"]]
        assert r.data.tags["dirl.evaluation"] == ("pipeline" if rid == pipeline_eval else "ad hoc")
        assert "test/IoU" in r.data.metrics and r.data.tags["mlflow.note.content"]
        assert r.data.params["sets.test"] == "6" and not any(k.endswith("/n") for k in r.data.metrics)  # a count
    assert "ihd_mini/IoU" in ids[adhoc[0]].data.metrics and "ihd_mini/IoU" not in ids[adhoc[1]].data.metrics
    # what MLflow holds of an evaluation is what its folder holds
    for rid, folder in ((pipeline_eval, tmp_path / "results/evaluate"), (adhoc[0], tmp_path / "adhoc1")):
        for name in ("metrics.json", "info.json"):
            logged = Path(client.download_artifacts(rid, f"evaluate/{name}", str(tmp_path / "dl" / rid)))
            assert logged.read_text() == (folder / name).read_text()


# ----------------------------------------------------------------------------- best is the maximum


HISTORY = [
    {
        "epoch": e,
        "train_loss": 3.0 - 0.1 * e,
        "val_loss": 2.0 + abs(e - 4) * 0.1,
        "val_iou": iou,
        "val_ap": ap,
        "val_f1": 0.3 + 0.01 * e,
        "lr": 1e-3,
        "images_per_s": 40.0,
    }
    for e, iou, ap in ((1, 26.43, 40.1), (2, 24.0, 42.53), (3, 25.1, 41.0), (4, 22.29, 42.22))
]
# (the best val IoU at epoch 1, the best AP at epoch 2, the lowest val loss at epoch 4; the last epoch is the worst)


def test_best_is_the_maximum_and_selected_is_the_exported_epoch():
    from dirl.train.outputs import epoch_figures

    last = epoch_figures(HISTORY, 4, "last")
    assert last["best_val_iou"] == max(r["val_iou"] for r in HISTORY) == 26.43 and last["best_epoch"] == 1
    assert last["best_val_ap"] == 42.53 and last["best_val_loss"] == min(r["val_loss"] for r in HISTORY)
    assert (last["selection"], last["selected_epoch"], last["selected_val_iou"], last["selected_val_ap"]) == (
        "last",
        4,
        22.29,
        42.22,
    )
    best = epoch_figures(HISTORY, 1, "best")
    assert best["selected_epoch"] == best["best_epoch"] == 1 and best["selected_val_iou"] == best["best_val_iou"]
    assert best["selected_val_ap"] == 40.1 and best["best_val_ap"] == 42.53  # each best_* on its own


def test_train_outputs_log_best_and_selected_apart(tmp_path, params_path):
    """The train stage's files and MLflow run, from a checkpoint of the last of four epochs (train.checkpoint:
    last): best_* are the maxima of the history, selected_* the exported epoch's, the rule a tag."""
    from types import SimpleNamespace

    import ray.train

    from dirl import tracking
    from dirl.models import create_model
    from dirl.summary import summary_lines
    from dirl.train.checkpoint import save_checkpoint
    from dirl.train.outputs import write_train_outputs
    from dirl.weights import read_weights
    from helpers.training import make_shards, tiny_train_cfg

    cfg = tiny_train_cfg(params_path, tmp_path, **{"train.checkpoint": "last", "train.epochs": 4})
    rows = [{**r, "best_val_iou": max(h["val_iou"] for h in HISTORY[: i + 1])} for i, r in enumerate(HISTORY)]
    ckpt = save_checkpoint(
        tmp_path / "ckpt",
        create_model("unet"),
        epoch=4,
        best=26.43,
        best_epoch=1,
        history=rows,
        config=cfg.to_dict(),
        model_name="unet",
    )  # rows as the worker writes them
    result = SimpleNamespace(checkpoint=ray.train.Checkpoint.from_directory(str(ckpt)), best_checkpoints=[])
    run = tracking.open_run(cfg, "train", {"stage": "train"}, root=tmp_path)
    logger = tracking.MlflowEpochLogger(run.uri, run.run_id)
    logger.sync(rows)
    shards = make_shards(tmp_path / "shards", n_train=4, n_val=3, size=32)
    out = write_train_outputs(
        cfg, result, tmp_path / "results" / "train", run, "x", str(tmp_path), False, 1.0, 1.0, data_dirs=[shards]
    )
    info = json.loads((tmp_path / "results/train/info.json").read_text())
    assert info["best_val_iou"] == 26.43 and info["best_epoch"] == 1 and info["best_val_ap"] == 42.53
    assert info["selected_epoch"] == 4 and info["selected_val_iou"] == 22.29 and info["selection"] == "last"
    assert json.loads((tmp_path / "results/train/metrics.json").read_text()) == {
        "selected_val_iou": 22.29,
        "best_val_iou": 26.43,
    }
    header = read_weights(tmp_path / "results/train/model.pt")
    assert header["epoch"] == 4 and header["metrics"]["val_iou"] == 22.29 and header["metrics"]["selection"] == "last"
    got = run.client.get_run(out["run_id"])
    assert got.data.metrics["val/best_IoU"] == 26.43 and got.data.metrics["val/best_AP"] == 42.53
    assert got.data.metrics["val/selected_IoU"] == 22.29 and got.data.metrics["val/selected_AP"] == 42.22
    assert got.data.tags["selection"] == "last" and got.data.tags["selected_epoch"] == "4"
    # metrics grouped by prefix, counts not among them; the prior's val IoU as a flat reference line
    assert {"train/loss", "val/IoU", "val/AP", "val/loss", "perf/img_per_s", "train/lr"} <= set(got.data.metrics)
    assert all("/" in k for k in got.data.metrics) and "steps" not in got.data.metrics
    prior = run.client.get_metric_history(out["run_id"], "val/prior_IoU")
    assert sorted(m.step for m in prior) == [1, 2, 3, 4] and len({m.value for m in prior}) == 1
    assert info["val_prior_iou"] == prior[0].value
    note = got.data.tags["mlflow.note.content"]
    assert note.startswith("Trained unet at 32 px for 4 epochs on shards: exported epoch 4") and "centred prior" in note
    for key in ("val/best_IoU",):  # a curve: the best so far at every epoch, never above the maximum
        points = run.client.get_metric_history(out["run_id"], key)
        assert max(m.value for m in points) == 26.43 and len({m.step for m in points}) == len(points)
    text = "\n".join(summary_lines(tmp_path))
    assert "exported epoch 4 of 4 (train.checkpoint: last): val IoU 22.29" in text
    assert "best over the epochs: val IoU 26.43 (epoch 1), val AP 42.53" in text
