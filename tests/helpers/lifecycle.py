"""Builders for the lifecycle tests (evaluate, predict, release, serve, hostile config): a synthetic composite,
shard folders of composites written through ``dirl.data.shards``, weights files of real (untrained) models, a
config on the real params.yaml, an MLflow "training run" with its run.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from dirl.config import load_config
from dirl.data.images import encode_jpeg, encode_png
from dirl.data.shards import ShardWriter, write_manifest
from dirl.models import create_model
from dirl.weights import save_weights
from helpers.paths import PARAMS


def composite(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random photo with a colour-shifted rectangle: (RGB uint8 (h, w, 3), mask {0,1} (h, w))."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 3)
    mask = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y : y + h // 3, x : x + w // 3] = 1
    shifted = np.clip(img.astype(np.int16) + np.array([60, -40, 20]), 0, 255).astype(np.uint8)
    return np.where(mask[..., None] == 1, shifted, img), mask


def make_shard_folder(
    out: Path, source: str, ids: list[str], split: str = "test", size: int = 48, seed: int = 0
) -> Path:
    """A shard folder of ``split`` composites (plus one train row) through the project's writer."""
    rows = []
    for i, item in enumerate(ids + [f"{ids[0]}_train"]):
        img, mask = composite(seed + i, size, size)
        rows.append(
            {
                "id": item,
                "subset": "unit",
                "split": split if i < len(ids) else "train",
                "image": encode_jpeg(img),
                "mask": encode_png(mask),
                "real": None,
                "orig_h": size,
                "orig_w": size,
                "height": size,
                "width": size,
                "fg_ratio": float(mask.mean()),
                "source": source,
                "synth_method": "reinhard" if source == "synthesized" else None,
                "ref_id": None,
            }
        )
    with ShardWriter(out, "all") as w:
        for r in rows:
            w.write(r)
    write_manifest(out, w.shards)
    return out


def make_workspace(root: Path, n_synth: int = 4, n_real: int = 2) -> list[Path]:
    """data/synth (synthesized) and data/shards (composite) test rows under ``root``; returns both dirs."""
    synth = make_shard_folder(root / "data" / "synth", "synthesized", [f"s{i:02d}" for i in range(n_synth)], seed=0)
    shards = make_shard_folder(root / "data" / "shards", "composite", [f"r{i:02d}" for i in range(n_real)], seed=100)
    return [synth, shards]


def make_weights(path: Path, name: str = "unet", size: int = 32, seed: int = 0, constant: bool = False) -> Path:
    """A weights file of an untrained model; ``constant`` zeroes a UNet's head so every map is flat (IoU 0)."""
    torch.manual_seed(seed)
    model = create_model(name)
    if name == "unet":
        with torch.no_grad():
            if constant:
                model.head.weight.zero_()
                model.head.bias.fill_(-2.0)
            else:  # spread the (untrained) output over (0, 1) so that the 0.5 threshold selects a region
                model.head.weight.mul_(200.0)
    return save_weights(path, model, name, size, metrics={"val_iou": 0.0}, epoch=1)


def make_cfg(tmp: Path, size: int = 32, name: str = "unet", **over):
    overrides = {
        "model.name": name,
        "model.input_size": size,
        "evaluate.batch_size": 4,
        "evaluate.grid_items": 3,
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "register.model_name": "dirl-test",
    }
    overrides.update(over)
    return load_config(PARAMS, overrides=overrides)


def make_training_run(cfg, train_dir: Path) -> str:
    """An MLflow run standing for a training run, and its run.json beside the weights."""
    import mlflow

    from dirl.tracking import setup, tracking_uri

    exp_id = setup(cfg)
    run = mlflow.MlflowClient(tracking_uri(cfg)).create_run(exp_id, run_name="train")
    (train_dir / "run.json").write_text(
        json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": tracking_uri(cfg)})
    )
    return run.info.run_id


def make_logged_training(cfg, train_dir: Path, epochs: int = 3, name: str = "unet", size: int = 32) -> dict:
    """What the train stage leaves, without Ray: weights, an MLflow run holding one point per metric and epoch,
    history.csv as an artifact, the weights logged as the run's model (as training logs them), run.json naming
    both; the run closed FINISHED. Returns run.json's content."""
    import mlflow

    from dirl.stages.train import log_model
    from dirl.tracking import MlflowEpochLogger
    from dirl.train.outputs import write_history_csv

    train_dir.mkdir(parents=True, exist_ok=True)
    weights = make_weights(train_dir / "model.pt", name, size)
    run_id = make_training_run(cfg, train_dir)
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "val_loss": 2.5 / e,
            "val_ap": 30.0 + e,
            "val_f1": 0.3,
            "val_iou": 20.0 + 3 * e - e * e,
            "lr": 1e-3,
        }
        for e in range(1, epochs + 1)
    ]
    run = json.loads((train_dir / "run.json").read_text())
    logger = MlflowEpochLogger(run["tracking_uri"], run_id)
    logger.sync(history)
    write_history_csv(history, train_dir / "history.csv")
    client = mlflow.MlflowClient(run["tracking_uri"])
    client.log_artifact(run_id, str(train_dir / "history.csv"))
    run.update(log_model(weights, run_id))
    client.set_terminated(run_id, status="FINISHED")
    (train_dir / "run.json").write_text(json.dumps(run))
    return run


def make_ihd(root: Path, n: int = 3) -> Path:
    """An iHarmony4-layout folder (HFlickr) of ``n`` non-square composites with masks."""
    for sub in ("composite_images", "masks"):
        (root / "HFlickr" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = composite(500 + i, 40, 56)
        cv2.imwrite(str(root / "HFlickr" / "composite_images" / f"f{i}_1_1.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "HFlickr" / "masks" / f"f{i}_1.png"), mask * 255)
    return root
