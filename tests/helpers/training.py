"""Builders for the training and tuning tests: a toy shard set and params.yaml shrunk to a seconds-long CPU run."""

from __future__ import annotations

from pathlib import Path

from dirl.config import load_config


def make_shards(out_dir: Path, n_train: int = 24, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Synthetic composites in the shard format: one colour-shifted rectangle per image is the mask."""
    from dirl.data.toy import toy_shards

    return toy_shards(out_dir, n_train, n_val, size, seed)


def tiny_train_cfg(params_path: Path, tmp: Path, **overrides):
    """params.yaml shrunk to a seconds-long CPU run under ``tmp``."""
    base = {
        "model.name": "unet",
        "model.input_size": 32,
        "train.warmup_steps": 0,
        "train.epochs": 2,
        "train.batch_size": 2,
        "train.max_steps_per_epoch": 2,
        "train.lr": 1e-3,
        "train.precision": "fp32",
        "train.channels_last": False,
        "train.use_tune_best": False,
        "cluster.num_workers": 1,
        "cluster.cpus_per_worker": 0.5,
        "cluster.max_failures": 1,
        "cluster.storage_path": str(tmp / "ray_results"),
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "mlflow.experiment": "dirl-test",
    }
    base.update(overrides)
    return load_config(params_path, overrides=base)
