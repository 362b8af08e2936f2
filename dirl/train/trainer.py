"""The train stage: Ray Train (TorchTrainer, DDP) over the shards, tracked in one MLflow run.

    from dirl.config import load_config
    from dirl.train import train
    out = train(load_config("params.yaml"), out_dir="results/train")
    out["run_id"], out["metrics"]["best_val_iou"]

What :func:`train` does, top to bottom:

1. fills the tuned keys that params.yaml leaves null (``train.lr``, ``train.weight_decay``, ``train.lam``) from
   ``results/tune/best.yaml`` (:func:`dirl.train.tuned.resolve_tuned`; an explicit value wins);
2. checks the shards, then starts or joins Ray (:func:`dirl.cluster.ray_session`) and sizes the worker group to
   fit (:func:`dirl.cluster.plan_workers`);
3. opens the MLflow run (:func:`dirl.tracking.open_run`; reopened on resume); rank 0 of the workers logs into it;
4. runs ``TorchTrainer.fit()`` (the loop is :func:`dirl.train.worker.train_loop_per_worker`): checkpoints every
   epoch under ``<storage_path>/<name>``; the name is derived from the model, the training settings, the data and
   the code, so running again with the same settings (more epochs, or after a crash) resumes that run, while new
   settings start a new one;
5. writes ``out_dir`` (:func:`dirl.train.outputs.write_train_outputs`): model.pt, metrics.json, history.csv,
   learning_curve.png, run.json, config.yaml, and logs them to MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from dirl import tracking, workspace
from dirl.cluster import plan_workers, ray_session, storage_path
from dirl.config import Config
from dirl.train.outputs import write_train_outputs
from dirl.train.tuned import resolve_tuned
from dirl.train.worker import build_trainer

log = logging.getLogger("dirl.train")

RUN_FILE = "dirl_run.json"  # beside Ray's files in <storage>/<name>: the MLflow run this Ray run logs into
# train keys that do not change what is learnt: a run differing only in these resumes the same Ray run
RESUMABLE_KEYS = ("epochs", "val_every", "use_tune_best", "checkpoint")


def code_digest(root: str | os.PathLike | None = None) -> str:
    """sha256 of the ``dirl`` package's code: every ``*.py`` under ``root`` (default: the installed package),
    by sorted relative path and content. Part of :func:`run_name`, so that changed code never resumes a run."""
    import dirl

    base = Path(root) if root else Path(dirl.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix()):
        data = f.read_bytes()
        h.update(f"{f.relative_to(base).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def dataset_hashes(data_dirs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{folder name: dataset_hash}`` from each shard folder's manifest."""
    from dirl.data.shards import read_manifest

    return {Path(d).name: read_manifest(d).get("dataset_hash", "") for d in data_dirs}


def run_name(cfg: Config, data_dirs: Sequence[str | os.PathLike], code_root: str | os.PathLike | None = None) -> str:
    """A stable Ray run name: model name + a hash of what defines the training (not its length or size):
    the model and train settings, the data (dataset hashes) and the code (:func:`code_digest` of ``code_root``,
    default the installed ``dirl`` package), so that a code change starts a new run instead of resuming."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RESUMABLE_KEYS}
    key = {"model": dataclasses.asdict(cfg.model), "train": train, "data": sorted(dataset_hashes(data_dirs).items()),
           "code": code_digest(code_root)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.model.name}-{digest}"


def train(cfg: Config, out_dir: str | os.PathLike = workspace.results("train"), parent_run_id: str | None = None,
          *, data_dirs: Sequence[str | os.PathLike] | None = None, name: str | None = None, resume: bool = True,
          root: str | os.PathLike | None = None, tune_best: str | os.PathLike | None = None,
          status_dir: str | os.PathLike | None = None) -> dict:
    """Train ``cfg.model`` with Ray Train and write the outputs into ``out_dir``; return a summary.

    ``data_dirs``: shard folders (default ``data/shards`` and ``data/synth`` of the workspace).
    ``name``: Ray run name (default :func:`run_name`); an existing run of that name in the storage path is
    resumed from its last checkpoint unless ``resume`` is False (then a fresh, timestamped name is used).
    ``tune_best``: the tune stage's file (default ``results/tune/best.yaml`` of the workspace): it fills the tuned
    keys that ``cfg`` leaves null; where each value came from is printed and recorded as the MLflow tag
    ``tuned_sources``. ``status_dir``: workers write ``rank-N.json`` (pid, epoch).
    Returns ``{"run_id", "experiment_id", "tracking_uri", "name", "checkpoint", "metrics", "history",
    "resumed", "out_dir", "fit_s", "setup_s"}``.
    """
    from dirl.data.shards import check_shards

    t_start = time.perf_counter()
    root = workspace.root(root)
    out_dir = Path(out_dir)
    tune_best = Path(tune_best) if tune_best else root / workspace.TUNE_BEST
    cfg, tuned = resolve_tuned(cfg, tune_best)
    shown = {k: getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in tuned}
    print("tuned values: " + ", ".join(f"{k}={shown[k]} ({src}{': ' + str(tune_best) if src == 'tune' else ''})"
                                       for k, src in tuned.items()), file=sys.stderr, flush=True)
    dirs = [Path(d).resolve() for d in data_dirs] if data_dirs else workspace.shard_dirs(root)
    check_shards(dirs)  # a bad shard is a data error: fail here, in one line, before Ray starts
    storage = storage_path(cfg, root)
    name = name or run_name(cfg, dirs)
    run_dir = Path(storage) / name if "://" not in storage else None
    if not resume and run_dir is not None and run_dir.exists():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(storage) / name
    resumed = run_dir is not None and (run_dir / "checkpoint_manager_snapshot.json").is_file()

    with ray_session(cfg) as resources:
        placement = plan_workers(cfg, resources)
        for note in placement.notes:
            log.warning(note)
        tags = {"ray_run_name": name, "stage": "train", "model": cfg.model.name, "code_digest": code_digest(),
                "tuned_sources": json.dumps(tuned, sort_keys=True), **tracking.provenance_tags(root, dirs)}
        record = run_dir / RUN_FILE if run_dir is not None else None
        title = f"train {cfg.model.name} {cfg.model.input_size}px lr={cfg.train.lr:.2g} · {name.rsplit('-', 1)[-1]}"
        run = tracking.open_run(cfg, title, tags, root=root, record=record, parent_run_id=parent_run_id)
        with tracking.closing(run):
            tracking.log_datasets(run.client, run.run_id, dirs, {"train": "training", "val": "validation"})
            loop_config = {"cfg": cfg.to_dict(), "run_id": run.run_id, "tracking_uri": run.uri,
                           "status_dir": str(status_dir) if status_dir else None}
            trainer = build_trainer(cfg, dirs, placement, name, storage, loop_config)
            setup_s = time.perf_counter() - t_start
            t_fit = time.perf_counter()
            result = trainer.fit()
            fit_s = time.perf_counter() - t_fit
            if result.checkpoint is None:
                raise RuntimeError(f"training run {name} finished without a checkpoint; see {Path(storage) / name}")
            return write_train_outputs(cfg, result, out_dir, run, name, storage, resumed, fit_s, setup_s)
