"""The train stage: Ray Train (TorchTrainer, DDP) over the shards, tracked in one MLflow run.

    python -m dirl.stages.train            # what dvc.yaml runs; `dirl train` calls the same run()
    from dirl.stages import train
    out = train.run(load_config("params.yaml"), out_dir="results/train")
    out["run_id"], out["metrics"]["best_val_iou"]

What :func:`run` does, top to bottom:

1. fills the tuned keys that params.yaml leaves null (``train.lr``, ``train.weight_decay``, ``train.lam``) from
   ``results/tune/best.yaml`` (:func:`dirl.train.best_yaml.resolve_tuned`; an explicit value wins);
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

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import mlflow

from dirl import tracking, workspace
from dirl.cluster import plan_workers, ray_session, storage_path
from dirl.config import Config
from dirl.data.shards import check_shards
from dirl.io import sha256_file
from dirl.lifecycle.pyfunc import log_pyfunc
from dirl.stages.contract import main
from dirl.train.best_yaml import resolve_tuned, with_backbone_resolved
from dirl.train.naming import RUN_FILE, code_digest, run_name
from dirl.train.outputs import write_train_outputs
from dirl.train.worker import build_trainer

log = logging.getLogger("dirl.train")

PARAMS = ("model", "train")


def log_model(weights: Path, run_id: str) -> dict:
    """Log the weights once, as the run's MLflow logged model (pyfunc, ``models:/<model_id>``): ``dirl register``
    registers that same model (no second copy) and ``dirl predict --model <run id>`` loads it."""
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(weights, name="model", tags={"weights_sha256": sha256_file(weights)})
    return {"model_id": info.model_id, "logged_model_uri": info.model_uri}


def run(
    cfg: Config,
    out_dir: str | os.PathLike = workspace.RESULTS / "train",
    parent_run_id: str | None = None,
    *,
    data_dirs: Sequence[str | os.PathLike] | None = None,
    name: str | None = None,
    resume: bool = True,
    root: str | os.PathLike | None = None,
    tune_best: str | os.PathLike | None = None,
    status_dir: str | os.PathLike | None = None,
) -> dict:
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
    t_start = time.perf_counter()
    root = workspace.root(root)
    out_dir = Path(out_dir)
    tune_best = Path(tune_best) if tune_best else root / workspace.TUNE_BEST
    cfg, tuned = resolve_tuned(cfg, tune_best)
    cfg = with_backbone_resolved(cfg, root)  # an absolute path every worker reads, or one line now if it is missing
    shown = {k: getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in tuned}
    print(
        "tuned values: "
        + ", ".join(
            f"{k}={shown[k]} ({src}{': ' + str(tune_best) if src == 'tune' else ''})" for k, src in tuned.items()
        ),
        file=sys.stderr,
        flush=True,
    )
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
        tags = {
            "ray_run_name": name,
            "stage": "train",
            "model": cfg.model.name,
            "code_digest": code_digest(),
            "tuned_sources": json.dumps(tuned, sort_keys=True),
            **tracking.provenance_tags(root, dirs),
        }
        record = run_dir / RUN_FILE if run_dir is not None else None
        title = f"train {cfg.model.name} {cfg.model.input_size}px lr={cfg.train.lr:.2g} · {name.rsplit('-', 1)[-1]}"
        run = tracking.open_run(cfg, title, tags, root=root, record=record, parent_run_id=parent_run_id)
        with tracking.finishing(run):
            tracking.log_datasets(run.client, run.run_id, dirs, {"train": "training", "val": "validation"})
            loop_config = {
                "cfg": cfg.to_dict(),
                "run_id": run.run_id,
                "tracking_uri": run.uri,
                "status_dir": str(status_dir) if status_dir else None,
            }
            trainer = build_trainer(cfg, dirs, placement, name, storage, loop_config)
            setup_s = time.perf_counter() - t_start
            t_fit = time.perf_counter()
            result = trainer.fit()
            fit_s = time.perf_counter() - t_fit
            if result.checkpoint is None:
                raise RuntimeError(f"training run {name} finished without a checkpoint; see {Path(storage) / name}")
            return write_train_outputs(
                cfg, result, out_dir, run, name, storage, resumed, fit_s, setup_s, data_dirs=dirs, log_model=log_model
            )


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "train"))
