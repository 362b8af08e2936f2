"""Shared fixtures: the real params.yaml (also shrunk to a seconds-long CPU run), the shared real data, a private
local Ray, toy shards, one torch thread, the hostile-input tally.

Plain helpers (builders of archives, images, configs, weights...) are in ``tests/helpers/``, imported by the test
modules as ``from helpers.builders import make_zip``; no test module imports another test module or this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.paths import PARAMS, shared_data_dir, shared_data_path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or $DIRL_SHARED_DATA); skips the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            f"real data folder {shared_data_path()} (../shared/data or $DIRL_SHARED_DATA) is absent in this checkout"
        )
    return path


@pytest.fixture
def params_path() -> Path:
    return PARAMS


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
            "cluster.data_workers": 1,
            "synth.per_image": 1,
            "train.epochs": 2,
            "train.batch_size": 4,
            "train.max_steps_per_epoch": 3,
            "cluster.storage_path": str(tmp_path / "ray_results"),
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


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """One tiny toy shard set (64x64 synthetic composites) for the tests of one module (train, tune)."""
    from helpers.training import make_shards

    return make_shards(tmp_path_factory.mktemp("shards") / "shards")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny inputs on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention (~50x here).

    Opt-in per module (the lifecycle tests): ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- hostile-input tally


HOSTILE = pytest.StashKey[dict]()


@pytest.fixture
def hostile_tally(pytestconfig) -> dict:
    """Counts that tests/test_hostile.py adds to; ``pytest_terminal_summary`` prints them as one line."""
    return pytestconfig.stash.setdefault(HOSTILE, {"tried": 0, "reported": 0, "good": 0, "kept": 0, "lost": 0})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    t = config.stash.get(HOSTILE, None)
    if t:
        terminalreporter.write_line(
            f"hostile inputs: tried {t['tried']} / reported by name {t['reported']} / "
            f"good items kept {t['kept']} of {t['good']} / lost {t['lost']}"
        )
