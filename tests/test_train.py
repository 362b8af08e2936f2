"""Training: loop pieces, checkpoints, the shard loader, and the Ray Train stage end to end on local Ray.

The end-to-end tests share one local Ray (2 CPUs) and one tiny shard set (the ``shards`` fixture of conftest:
synthetic 64x64 composites, a textured background with a rectangle whose colour is shifted). A run trains the
UNet baseline at 32x32 for a couple of 2-step epochs: seconds of compute, plus Ray Train's fixed start-up cost per
``fit()``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dirl.config import ConfigError, load_config
from dirl.losses import DIRLLoss
from dirl.models import create_model
from dirl.speed import SpeedConfig
from dirl.tracking import metric_name
from dirl.train.checkpoint import export_model, load_checkpoint, save_checkpoint
from dirl.train.epoch import build_optimizer, build_scheduler, evaluate_batches, seed_everything, train_one_epoch
from dirl.weights import load_weights
from helpers.paths import PARAMS
from helpers.training import make_shards, tiny_train_cfg

FP32 = SpeedConfig("fp32", False, False)


# ----------------------------------------------------------------------------- data


def fixed_batch(n: int = 2, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 4 : 3 * size // 4] = 1.0
    image = torch.randn(n, 3, size, size, generator=g) + 2.0 * mask  # the region is shifted
    return {"image": image, "mask": mask, "id": [f"b{i}" for i in range(n)]}


# ----------------------------------------------------------------------------- loop pieces


def test_optimizer_is_adam_with_l2_and_lr_halves_at_milestones(params_path):
    cfg = load_config(
        params_path,
        overrides={
            "train.milestones": [2, 4],
            "train.gamma": 0.5,
            "train.lr": 1e-3,
            "train.weight_decay": 1e-4,
            "train.schedule": "multistep",
            "train.warmup_steps": 0,
        },
    )
    model = nn.Conv2d(3, 1, 3)
    opt = build_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam  # coupled L2, not AdamW
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    sched = build_scheduler(opt, cfg.train)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])
    cfg.train.betas = [0.9]
    with pytest.raises(ValueError, match="train.betas"):
        build_optimizer(model, cfg)


def test_train_one_epoch_decreases_loss_on_a_fixed_batch(params_path):
    seed_everything(0)
    cfg = load_config(params_path, overrides={"train.lr": 1e-3, "train.weight_decay": 1e-4})
    model = create_model("unet")
    opt = build_optimizer(model, cfg)
    loss_fn = DIRLLoss()
    batch = fixed_batch()
    first = train_one_epoch(model, [batch], loss_fn, opt, "cpu", FP32)
    assert first["steps"] == 1 and first["images"] == 2 and math.isfinite(first["train_loss"])
    stats = train_one_epoch(model, [batch] * 10, loss_fn, opt, "cpu", FP32, max_steps=4)
    assert stats["steps"] == 4 and stats["images"] == 8
    assert {"loss_bce", "loss_ssim", "loss_iou", "step_s", "images_per_s"} <= set(stats)
    last = train_one_epoch(model, [batch], loss_fn, opt, "cpu", FP32)
    assert last["train_loss"] < 0.9 * first["train_loss"]


class MaskEcho(nn.Module):
    """A network that outputs its first input channel squashed to [0, 1]: a perfect localiser here."""

    def forward(self, x):
        return [torch.sigmoid(20 * (x[:, :1] - 0.5))]


def test_evaluate_batches_scores_a_perfect_and_an_inverted_prediction():
    batch = fixed_batch(3)
    batch["image"][:, 0] = batch["mask"][:, 0]  # channel 0 is the mask
    good = evaluate_batches(MaskEcho(), [batch], "cpu", FP32, DIRLLoss())
    assert good["val_n"] == 3
    assert good["val_iou"] == pytest.approx(100.0, abs=1e-3) and good["val_ap"] == pytest.approx(100.0, abs=1e-3)
    assert good["val_f1"] == pytest.approx(1.0, abs=1e-4) and good["val_loss"] < 0.5
    batch["image"][:, 0] = 1 - batch["mask"][:, 0]
    bad = evaluate_batches(MaskEcho(), [batch], "cpu", FP32)
    assert bad["val_iou"] == pytest.approx(0.0, abs=1e-3) and math.isnan(bad["val_loss"])
    with pytest.raises(ValueError, match="validation split is empty"):
        evaluate_batches(MaskEcho(), [], "cpu", FP32)


def test_checkpoint_round_trip_restores_everything(params_path, tmp_path):
    cfg = load_config(
        params_path,
        overrides={
            "train.lr": 1e-3,
            "train.weight_decay": 1e-4,
            "train.milestones": [1],
            "train.schedule": "multistep",
            "train.warmup_steps": 0,
        },
    )
    seed_everything(1)
    model = create_model("unet")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    train_one_epoch(model, [fixed_batch()], DIRLLoss(), opt, "cpu", FP32)
    sched.step()
    history = [{"epoch": 1, "train_loss": 2.0, "val_iou": 10.0}]
    path = save_checkpoint(
        tmp_path / "ckpt",
        model,
        opt,
        sched,
        epoch=1,
        best=10.0,
        best_epoch=1,
        history=history,
        config=cfg.to_dict(),
        model_name="unet",
        model_kwargs={"pretrained": "x.pth"},
    )
    # overwrite in place: the folder is replaced atomically, no temporary left behind
    save_checkpoint(
        path,
        model,
        opt,
        sched,
        epoch=1,
        best=10.0,
        best_epoch=1,
        history=history,
        config=cfg.to_dict(),
        model_name="unet",
        model_kwargs={"pretrained": "x.pth"},
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    expected_draw = (torch.rand(3), np.random.rand(), random.random())

    seed_everything(99)
    model2 = create_model("unet")
    opt2 = build_optimizer(model2, cfg)
    sched2 = build_scheduler(opt2, cfg)
    state = load_checkpoint(path, model2, opt2, sched2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-4) and sched2.last_epoch == 1
    assert len(opt2.state) == len(opt.state) > 0
    assert state["epoch"] == 1 and state["best"] == 10.0 and state["history"] == history
    assert state["config"]["train"]["lr"] == 1e-3 and state["meta"]["model_kwargs"] == {}  # init-only kwargs dropped
    draw = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(draw[0], expected_draw[0]) and draw[1:] == expected_draw[1:]

    exported, info = load_weights(export_model(path, tmp_path / "out" / "model.pt", {"val_iou": 10.0}))
    assert info["model"] == "unet" and info["options"] == {} and info["epoch"] == 1
    assert info["input_size"] == cfg.model.input_size and info["metrics"] == {"val_iou": 10.0}
    x = fixed_batch()["image"]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(exported(x)[0], model(x)[0])
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "out")


def test_mlflow_epoch_logger_never_logs_an_epoch_twice(params_path, tmp_path, monkeypatch):
    """A restarted rank 0 back-fills the epochs its checkpoint holds and the run lacks, and repeats none."""
    import mlflow

    from dirl import tracking
    from dirl.tracking import MlflowEpochLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    cfg = tiny_train_cfg(params_path, tmp_path)
    exp_id = tracking.setup(cfg)
    uri = cfg.mlflow.tracking_uri
    run_id = mlflow.MlflowClient(uri).create_run(exp_id).info.run_id
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_iou": float("nan") if e == 2 else 10.0 * e, "lr": 1e-3}
        for e in (1, 2, 3)
    ]
    first = MlflowEpochLogger(uri, run_id)
    first.log_params(cfg.to_dict())
    assert first.sync(history[:1]) == 1 and first.sync(history[:2]) == 1  # epoch 1 once, then epoch 2
    restarted = MlflowEpochLogger(uri, run_id)  # e.g. after a crash between report and logging epoch 3
    assert restarted.sync(history) == 1
    assert _mlflow_history(uri, run_id, "train/loss") == [1, 2, 3]
    assert _mlflow_history(uri, run_id, "val/IoU") == [1, 3]  # an epoch without validation logs no val/IoU
    cfg.train.epochs = 7
    restarted.log_params(cfg.to_dict())
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.tags["resumed_with.train.epochs"] == "2 -> 7"


def test_resolve_tuned_reads_flat_nested_and_dotted_files(params_path, tmp_path):
    from dirl.train.best_yaml import resolve_tuned

    cfg = load_config(params_path)  # train.lr and train.weight_decay are null: the tune stage's values
    best = tmp_path / "best.yaml"
    best.write_text("lr: 0.0003\nweight_decay: 0.0\nval_iou: 55.0\n")  # hand-written: no tune block
    new, sources = resolve_tuned(cfg, best)
    assert new.train.lr == 3e-4 and new.train.weight_decay == 0.0
    assert sources == {"train.lr": "tune", "train.weight_decay": "tune", "train.lam": "params.yaml"}
    assert cfg.train.lr is None  # the input config is untouched
    best.write_text("config: {train: {batch_size: 4}, train.weight_decay: 0.001}\n")
    new, sources = resolve_tuned(cfg, best)
    assert new.train.weight_decay == 1e-3 and new.train.lr == 1e-4 and sources["train.lr"] == "default"
    assert new.train.batch_size == cfg.train.batch_size  # only null tuned keys are filled
    best.write_text("lr: -1\n")
    with pytest.raises(ConfigError, match="train.lr"):
        resolve_tuned(cfg, best)


def test_plan_workers_fits_the_cluster(params_path):
    from dirl.cluster import plan_workers

    cfg = load_config(params_path, overrides={"cluster.num_workers": 4, "cluster.cpus_per_worker": 1.0})
    p = plan_workers(cfg, {"CPU": 2.0})
    assert p.num_workers == 1 and p.cpus_per_worker == 1.0 and p.notes  # 2 - 0.1 kept for the drivers
    assert p.num_workers * p.cpus_per_worker <= 2.0 - 0.1
    cfg = load_config(
        params_path,
        overrides={
            "cluster.num_workers": 3,
            "cluster.min_workers": 1,
            "cluster.cpus_per_worker": 0.5,
            "train.batch_size": 12,
        },
    )
    p = plan_workers(cfg, {"CPU": 2.0})
    assert p.num_workers == (1, 3) and not p.notes and p.threads_per_worker == 1
    cfg = load_config(
        params_path, overrides={"cluster.num_workers": 8, "cluster.min_workers": 4, "cluster.cpus_per_worker": 1.0}
    )
    p = plan_workers(cfg, {"CPU": 2.0})
    assert p.num_workers == (1, 8) and p.notes  # the elastic minimum fits now; Ray may grow the group later
    cfg = load_config(params_path, overrides={"cluster.cpus_per_worker": 4.0})
    p = plan_workers(cfg, {"CPU": 2.0})
    assert p.cpus_per_worker == pytest.approx(1.9) and p.num_workers == 1 and p.threads_per_worker == 2
    cfg = load_config(params_path, overrides={"cluster.use_gpu": True})
    with pytest.raises(ConfigError, match="cluster.use_gpu"):
        plan_workers(cfg, {"CPU": 2.0})


def test_run_name_ignores_length_but_not_hyperparameters(params_path, shards):
    from dirl.train.naming import run_name

    cfg = load_config(params_path)
    name = run_name(cfg, [shards])
    assert name == run_name(
        load_config(params_path, overrides={"train.epochs": 50, "cluster.num_workers": 2}), [shards]
    )
    assert name != run_name(load_config(params_path, overrides={"train.lr": 3e-4}), [shards])
    assert name.startswith(cfg.model.name + "-")


# ----------------------------------------------------------------------------- Ray


def _grouped_shards(out_dir: Path, photos: int = 12, per_photo: int = 8, size: int = 32) -> Path:
    """A shard folder whose train rows come in photo groups (ids ``p<k>__<i>``, written photo by photo, as
    synthesis writes them), plus one real photo row per group (``source = photo``: not a training item)."""
    from dirl.data.images import encode_jpeg, encode_png
    from dirl.data.shards import ShardWriter, write_manifest

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.uint8)
    mask[8:20, 8:20] = 1
    with ShardWriter(out_dir, "train", batch_rows=16) as w:
        for p in range(photos):
            for i in range(per_photo + 1):
                img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                w.write(
                    {
                        "id": f"p{p:02d}__{'photo' if i == per_photo else i}",
                        "subset": "toy",
                        "split": "train",
                        "image": encode_jpeg(img),
                        "mask": encode_png(mask),
                        "orig_h": size,
                        "orig_w": size,
                        "height": size,
                        "width": size,
                        "fg_ratio": float(mask.mean()),
                        "source": "photo" if i == per_photo else "synthesized",
                    }
                )
    write_manifest(out_dir, w.shards)
    return out_dir


def test_loader_reads_composites_only_and_shuffles_globally_every_epoch(tmp_path):
    from dirl.data.loader import ShardDataset, epoch_order

    ds = ShardDataset([_grouped_shards(tmp_path / "s")], "train", 32, train=True, seed=5)
    assert len(ds) == 96 and not any(i.endswith("__photo") for i in ds.ids)  # real photos are not trained on
    photo_rows = ShardDataset([tmp_path / "s"], "train", 32, train=True, sources=None)
    assert len(photo_rows) == 108

    # one global permutation per epoch, the same for every rank, dealt round-robin: ranks are disjoint and
    # cover the epoch; another epoch is another permutation; the same (seed, epoch) is the same order
    o1 = [epoch_order(96, 5, 1, rank=r, world=2) for r in range(2)]
    assert sorted(np.concatenate(o1).tolist()) == list(range(96)) and not set(o1[0]) & set(o1[1])
    assert not np.array_equal(epoch_order(96, 5, 2), epoch_order(96, 5, 1))
    assert np.array_equal(epoch_order(96, 5, 1), epoch_order(96, 5, 1))

    # mixing: a batch of 8 holds rows of ~7 photos (12 photos, uniform draw: 8 * (1 - (1 - 1/12)^... ) ~ 6.3+),
    # not the 1-2 photos of a file order with a small shuffle buffer
    distinct = [len({i.split("__")[0] for i in b["id"]}) for b in ds.iter_batches(8, shuffle=True, drop_last=True)]
    assert len(distinct) == 12 and np.mean(distinct) >= 5.0
    ds.set_epoch(1)
    first = [b["id"] for b in ds.iter_batches(8, shuffle=True, prefetch=2)]
    assert first == [b["id"] for b in ds.iter_batches(8, shuffle=True)]  # prefetching changes nothing
    ds.set_epoch(2)
    assert [b["id"] for b in ds.iter_batches(8, shuffle=True)] != first


def test_same_config_same_first_epoch_loss(tmp_path):
    """Model init, batch order and augmentation are all seeded from train.seed: two runs agree."""
    from dirl.data.loader import ShardDataset

    data = make_shards(tmp_path / "s", n_train=16)

    def first_epoch_loss() -> float:
        seed_everything(42)
        model = create_model("unet")
        cfg = load_config(PARAMS, overrides={"train.lr": 1e-3, "train.weight_decay": 0.0})
        opt = build_optimizer(model, cfg)
        ds = ShardDataset([data], "train", 32, train=True, seed=42)
        ds.set_epoch(1)
        batches = ds.iter_batches(4, shuffle=True, drop_last=True, prefetch=2)
        return train_one_epoch(model, batches, DIRLLoss(), opt, "cpu", FP32)["train_loss"]

    a, b = first_epoch_loss(), first_epoch_loss()
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-6, abs=1e-6)


def test_global_batch_is_split_over_workers():
    from dirl.train.worker import local_batch_size

    assert local_batch_size(16, 1) == 16 and local_batch_size(16, 4) == 4
    assert local_batch_size(10, 4) == 2  # an elastic group of 4: rounds down (and says so)
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(PARAMS, overrides={"train.batch_size": 10, "cluster.num_workers": 4})


def test_warmup_then_cosine_schedule(params_path):
    cfg = load_config(
        params_path,
        overrides={
            "train.lr": 1e-3,
            "train.weight_decay": 0.0,
            "train.schedule": "cosine",
            "train.warmup_steps": 4,
            "train.epochs": 2,
        },
    )
    opt = build_optimizer(nn.Conv2d(3, 1, 3), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * min(1.0, (k + 1) / 4) * 0.5 * (1 + math.cos(math.pi * k / 20)) for k in range(20)]
    assert lrs == pytest.approx(expected) and lrs[0] == pytest.approx(2.5e-4)  # linear ramp, cosine underneath
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.01 * 1e-3


def _mlflow_history(tracking_uri: str, run_id: str, key: str) -> list[int]:
    import mlflow

    return sorted(int(m.step) for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def trained(ray_local, shards, tmp_path_factory):
    """One 2-epoch run, then the same settings with 3 epochs (resumes the Ray run)."""
    from dirl.stages.train import run as train

    tmp = tmp_path_factory.mktemp("train")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(tmp)]
    subprocess.run(git[:1] + ["init", "-q", "-b", "main", str(tmp)], check=True)  # a workspace under git
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "workspace"], check=True)
    first = train(tiny_train_cfg(PARAMS, tmp), out_dir=tmp / "out", data_dirs=[shards], root=tmp)
    first_files = {p.name: p.stat().st_mtime_ns for p in (tmp / "out").iterdir()}
    second = train(
        tiny_train_cfg(PARAMS, tmp, **{"train.epochs": 3}), out_dir=tmp / "out2", data_dirs=[shards], root=tmp
    )
    return {"tmp": tmp, "first": first, "second": second, "first_files": first_files, "shards": shards}


def test_train_writes_outputs_and_one_mlflow_run(trained):
    tmp, first = trained["tmp"], trained["first"]
    out = tmp / "out"
    assert set(trained["first_files"]) >= {
        "model.pt",
        "metrics.json",
        "info.json",
        "history.csv",
        "run.json",
        "config.yaml",
        "learning_curve.png",
    }
    assert set(json.loads((out / "metrics.json").read_text())) == {"selected_val_iou", "best_val_iou"}  # dvc
    metrics = json.loads((out / "info.json").read_text())
    assert metrics["epochs"] == 2 and 1 <= metrics["best_epoch"] <= 2 and metrics["selected_epoch"] == 2  # last
    assert 0.0 <= metrics["selected_val_iou"] <= metrics["best_val_iou"] <= 100.0
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,val_ap,val_f1,val_iou,lr"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"] and all(r.split(",")[5] for r in rows[1:])
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == first["run_id"] and run["tracking_uri"] == f"sqlite:///{tmp / 'mlflow.db'}"
    # (the directory itself may since have been pruned by the resumed run's num_to_keep)
    assert Path(run["checkpoint"]).name == "epoch-0002" and Path(run["checkpoint"]).parent.is_dir()
    assert load_config(out / "config.yaml").model.name == "unet"

    model, info = load_weights(out / "model.pt")
    assert info["model"] == "unet" and info["epoch"] == metrics["selected_epoch"] and info["input_size"] == 32
    with torch.no_grad():
        assert model(fixed_batch()["image"])[0].shape == (2, 1, 32, 32)

    import mlflow

    client = mlflow.MlflowClient(run["tracking_uri"])
    runs = client.search_runs([run["experiment_id"]])
    assert [r.info.run_id for r in runs] == [run["run_id"]]
    got = client.get_run(run["run_id"])
    assert got.data.params["model.name"] == "unet" and got.data.params["train.batch_size"] == "2"
    assert got.data.tags["ray_run_name"] == first["name"]
    # MLflow's own source, user and git tags ("Created by", "Source" in the UI)
    tags = got.data.tags
    commit = subprocess.run(["git", "-C", str(tmp), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.branch"] == "main"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and tags["mlflow.user"]
    # the shards as dataset inputs: name, digest = the manifest's dataset hash, context training / validation
    manifest = json.loads((trained["shards"] / "manifest.json").read_text())
    inputs = {
        (d.dataset.name, d.dataset.digest, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
        for d in got.inputs.dataset_inputs
    }
    name = trained["shards"].name
    assert inputs == {
        (f"{name}-train", manifest["dataset_hash"][:16], "training"),
        (f"{name}-val", manifest["dataset_hash"][:16], "validation"),
    }
    # the weights once, as the run's logged model; the experiment opens on the training view
    assert client.get_logged_model(run["model_id"]).source_run_id == run["run_id"]
    assert client.get_experiment(run["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    arts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"config.yaml", "history.csv", "learning_curve.png", "metrics.json", "info.json"} <= arts


def test_resume_continues_from_the_last_epoch(trained):
    first, second, tmp = trained["first"], trained["second"], trained["tmp"]
    assert second["name"] == first["name"] and second["resumed"]
    assert second["run_id"] == first["run_id"]  # the same MLflow run goes on
    assert [r["epoch"] for r in second["history"]] == [1, 2, 3]
    assert second["history"][:2] == first["history"]  # epochs 1-2 come from the checkpoint, not re-run
    uri = second["tracking_uri"]
    for key in ("train/loss", "val/IoU", "train/lr"):
        assert _mlflow_history(uri, second["run_id"], key) == [1, 2, 3]
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(second["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.tags["resumed_with.train.epochs"] == "2 -> 3"
    assert json.loads((tmp / "out2" / "info.json").read_text())["epochs"] == 3
    kept = sorted(p.name for p in (tmp / "ray_results" / first["name"]).glob("epoch-*"))
    assert "epoch-0003" in kept and len(kept) <= 3  # num_to_keep=2 by val_iou, plus the latest


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(ray_local, shards, tmp_path, params_path):
    """SIGKILL the training worker mid-run: Ray restarts the group, which resumes at the next epoch."""
    from dirl.stages.train import run as train

    status = tmp_path / "status"
    cfg = tiny_train_cfg(params_path, tmp_path, **{"train.epochs": 4, "train.max_steps_per_epoch": 6})
    killed = {}

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                st = json.loads((status / "rank-0.json").read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("epoch") == 3 and st.get("phase") == "train":
                time.sleep(0.5)  # inside epoch 3's steps
                os.kill(st["pid"], signal.SIGKILL)
                killed.update(st)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = train(cfg, out_dir=tmp_path / "out", data_dirs=[shards], root=tmp_path, status_dir=status)
    thread.join(timeout=5)
    assert killed, "the worker never reached epoch 3"
    final = json.loads((status / "rank-0.json").read_text())
    assert final["pid"] != killed["pid"] and final["phase"] == "done"  # a new worker finished the run
    assert [r["epoch"] for r in out["history"]] == [1, 2, 3, 4]
    for key in ("train_loss", "val_iou"):  # the MLflow names: train/loss, val/IoU
        assert _mlflow_history(out["tracking_uri"], out["run_id"], metric_name(key)) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- tuned values, code digest


def test_resolve_tuned_keeps_an_explicit_value_and_fills_null_from_best_yaml(params_path, tmp_path):
    """`dvc exp run -S train.lr=3e-4`: the explicit value wins over best.yaml; a null key takes tune's value."""
    from dirl.config import TUNED_DEFAULTS
    from dirl.train.best_yaml import resolve_tuned

    best = tmp_path / "best.yaml"
    best.write_text(
        "train: {lr: 0.002, weight_decay: 0.0, lam: 1.0}\n"
        "tune: {metric: val_iou, searched: [train.lr, train.weight_decay]}\n"
    )
    cfg = load_config(params_path, overrides={"train.lr": 3e-4})
    new, sources = resolve_tuned(cfg, best)
    assert new.train.lr == 3e-4 and new.train.weight_decay == 0.0
    assert sources == {"train.lr": "params.yaml", "train.weight_decay": "tune", "train.lam": "params.yaml"}
    new, sources = resolve_tuned(load_config(params_path), best)
    assert new.train.lr == 0.002 and sources["train.lr"] == "tune"
    # a key tune did not search, tune skipped, no file, or train.use_tune_best false: the default
    best.write_text("train: {lr: 0.002, weight_decay: 0.0}\ntune: {searched: [train.weight_decay]}\n")
    new, sources = resolve_tuned(load_config(params_path), best)
    assert new.train.lr == TUNED_DEFAULTS["train.lr"] and sources["train.lr"] == "default"
    best.write_text("train: {lr: 0.002, weight_decay: 0.0}\ntune: {skipped: true}\n")
    assert set(resolve_tuned(load_config(params_path), best)[1].values()) == {"default", "params.yaml"}
    for cfg, path in (
        (load_config(params_path), tmp_path / "absent.yaml"),
        (load_config(params_path, overrides={"train.use_tune_best": False}), best),
        (load_config(params_path), None),
    ):
        new, sources = resolve_tuned(cfg, path)
        assert (new.train.lr, new.train.weight_decay) == (
            TUNED_DEFAULTS["train.lr"],
            TUNED_DEFAULTS["train.weight_decay"],
        )
        assert sources["train.lr"] == sources["train.weight_decay"] == "default"


def test_a_code_change_starts_a_new_run(params_path, shards, tmp_path):
    """The Ray run name keys on the code: after a change to the package, train no longer resumes the old run."""
    import shutil

    import dirl
    from dirl.train.best_yaml import resolve_tuned
    from dirl.train.naming import code_digest, run_name

    code = tmp_path / "dirl"
    shutil.copytree(Path(dirl.__file__).resolve().parent, code, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = resolve_tuned(load_config(params_path), None)[0]
    digest, name = code_digest(code), run_name(cfg, [shards], code_root=code)
    assert len(digest) == 64 and name == run_name(cfg, [shards], code_root=code)  # stable
    (code / "losses.py").write_text((code / "losses.py").read_text() + "\n# a change to the loss\n")
    assert code_digest(code) != digest and run_name(cfg, [shards], code_root=code) != name
    changed = code_digest(code)
    (code / "models" / "extra.py").write_text("X = 1\n")  # a new module counts too
    assert code_digest(code) != changed


def test_train_run_records_code_digest_and_tuned_sources(trained):
    import mlflow

    first = trained["first"]
    tags = mlflow.MlflowClient(first["tracking_uri"]).get_run(first["run_id"]).data.tags
    assert len(tags["code_digest"]) == 64 and int(tags["code_digest"], 16) >= 0
    # tiny_train_cfg sets train.lr and train.use_tune_best false: weight decay and lam take their defaults
    assert json.loads(tags["tuned_sources"]) == {
        "train.lr": "params.yaml",
        "train.weight_decay": "default",
        "train.lam": "params.yaml",
    }
