"""Shared fixtures: the real params.yaml shrunk to a seconds-long CPU run, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or $DIRL_SHARED_DATA); None when absent."""
    env = os.environ.get("DIRL_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data (or $DIRL_SHARED_DATA) is absent in this checkout")
    return path


@pytest.fixture
def params_path() -> Path:
    return ROOT / "params.yaml"


@pytest.fixture
def tiny_cfg(params_path, tmp_path):
    """The real params.yaml, shrunk to a seconds-long CPU run writing under tmp_path."""
    from dirl.config import load_config

    return load_config(
        params_path,
        overrides={
            "model.name": "dirl_lite",
            "model.input_size": 64,
            "data.stored_size": 64,
            "data.workers": 1,
            "synth.per_image": 1,
            "train.epochs": 2,
            "train.batch_size": 4,
            "train.max_steps_per_epoch": 3,
            "train.storage_path": str(tmp_path / "ray_results"),
            "tune.num_samples": 2,
            "tune.epochs": 1,
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        },
    )


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray with 2 CPUs for the tests of one module."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()
