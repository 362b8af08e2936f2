"""What names a training run: a Ray run name that is stable for the same model, settings, data and code, so that
running again (more epochs, or after a crash) resumes it while new settings start a new one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import dirl
from dirl.config import Config
from dirl.data.shards import read_manifest

RUN_FILE = "dirl_run.json"  # beside Ray's files in <storage>/<name>: the MLflow run this Ray run logs into
# train keys that do not change what is learnt: a run differing only in these resumes the same Ray run
RESUMABLE_KEYS = ("epochs", "val_every", "use_tune_best", "checkpoint")


def code_digest(root: str | os.PathLike | None = None) -> str:
    """sha256 of the ``dirl`` package's code: every ``*.py`` under ``root`` (default: the installed package),
    by sorted relative path and content. Part of :func:`run_name`, so that changed code never resumes a run."""
    base = Path(root) if root else Path(dirl.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix()):
        data = f.read_bytes()
        h.update(f"{f.relative_to(base).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def dataset_hashes(data_dirs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{folder name: dataset_hash}`` from each shard folder's manifest."""
    return {Path(d).name: read_manifest(d).get("dataset_hash", "") for d in data_dirs}


def run_name(cfg: Config, data_dirs: Sequence[str | os.PathLike], code_root: str | os.PathLike | None = None) -> str:
    """A stable Ray run name: model name + a hash of what defines the training (not its length or size):
    the model and train settings, the data (dataset hashes) and the code (:func:`code_digest` of ``code_root``,
    default the installed ``dirl`` package), so that a code change starts a new run instead of resuming."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RESUMABLE_KEYS}
    key = {
        "model": dataclasses.asdict(cfg.model),
        "train": train,
        "data": sorted(dataset_hashes(data_dirs).items()),
        "code": code_digest(code_root),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.model.name}-{digest}"
