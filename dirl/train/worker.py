"""The per-worker training function run by ``ray.train.torch.TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU), and
:func:`build_trainer`, the TorchTrainer that runs it (the train stage and every tune trial build theirs here).

Each worker reads its part of the training composites straight from the shard folders (``ShardDataset``: one
global permutation per epoch drawn from ``(train.seed, epoch)``, dealt to the ranks; augmentation seeded per
row and epoch), in batches of ``train.batch_size / world size`` (``train.batch_size`` is the global batch), and
every ``val_every`` epochs (and at the last one) rank 0 validates on the whole held-out ``val`` split. The shard
folders must be readable from every node (a shared folder on a cluster, as for ``storage_path``). Every epoch
ends with ``ray.train.report(metrics, checkpoint)``: rank 0 attaches a checkpoint folder (see
:mod:`dirl.train.checkpoint`) holding the model, optimizer, scheduler, epoch, best validation IoU and the
epoch history, so a restarted worker group resumes from ``ray.train.get_checkpoint()`` at the next epoch.

MLflow: rank 0 alone logs, into the one run whose id the driver passes in the loop config (never through
MLFLOW_RUN_ID), with ``step=epoch``. It logs an epoch only after its checkpoint was reported, and skips
epochs the run already holds, so a restart neither repeats nor loses an epoch: on start, epochs of the
checkpoint's history missing from the run (a crash between report and logging) are logged first.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dirl.cluster import Placement
from dirl.config import Config, config_from_dict
from dirl.io import write_json_atomic
from dirl.losses import DIRLLoss
from dirl.models import create_model
from dirl.progress import EpochProgress, emit, verbose
from dirl.speed import SpeedConfig, make_grad_scaler
from dirl.speed import prepare_model as prepare_speed
from dirl.train.checkpoint import load_checkpoint, save_checkpoint
from dirl.train.epoch import (
    VAL_KEYS,
    build_optimizer,
    build_scheduler,
    evaluate_batches,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger("dirl.train")

SCORE = "val_iou"  # best checkpoint by validation IoU (the reference's rule)
PREFETCH = 2  # batches decoded ahead in a background thread
VAL_CACHE_BYTES = 512 << 20  # decoded validation batches up to this size are kept in memory


def local_batch_size(global_batch: int, world: int) -> int:
    """Each worker's batch: ``train.batch_size`` (the global batch) split evenly over ``world`` workers.

    ``dirl config`` refuses a batch that ``cluster.num_workers`` does not divide; when Ray runs fewer workers
    (an elastic range, or a group shrunk to fit the cluster), an uneven split rounds down and says so.
    """
    local = max(1, global_batch // world)
    if local * world != global_batch:
        emit(
            f"train.batch_size {global_batch} does not split evenly over {world} workers: "
            f"{local} per worker, a global batch of {local * world}"
        )
    return local


SYNC_BN_BELOW = 8  # train.sync_bn auto: sync when a worker holds fewer images than the reference's BatchNorm batch


def use_sync_bn(mode: str, world: int, local_batch: int, device_type: str) -> tuple[bool, str | None]:
    """Whether BatchNorm syncs over the workers (``train.sync_bn``), and a note to print when the choice matters.

    ``on``: under DDP on GPUs. ``auto``: the same, only when a worker holds fewer than ``SYNC_BN_BELOW`` images
    (the reference normalises over 8 on one GPU). ``off``: never. One worker never syncs (nothing to sync with);
    CPU workers never do (PyTorch's SyncBatchNorm needs GPUs), which the note says when it was asked for.
    """
    wanted = mode == "on" or (mode == "auto" and local_batch < SYNC_BN_BELOW)
    if mode == "off" or world <= 1 or not wanted:
        return False, None
    if device_type == "cpu":
        return False, (
            f"train.sync_bn={mode}: SyncBatchNorm needs GPU workers; these {world} CPU workers normalise "
            f"over their own {local_batch} image(s) each"
        )
    return True, (
        f"SyncBatchNorm: BatchNorm statistics over the global batch of {local_batch * world} "
        f"({world} workers x {local_batch})"
    )


def model_kwargs(cfg) -> dict:
    """Options passed to ``create_model`` for ``cfg.model`` (empty pretrained = random init)."""
    kwargs = {}
    if cfg.model.pretrained:
        kwargs["pretrained"] = cfg.model.pretrained
        if cfg.model.pretrained_sha256:
            kwargs["pretrained_sha256"] = cfg.model.pretrained_sha256
    return kwargs


def _write_status(path: str | None, **fields) -> None:
    """Atomically write this worker's status (pid, rank, epoch) as JSON, for monitoring and fault tests."""
    if not path:
        return
    import ray

    node = ray.get_runtime_context().get_node_id()
    write_json_atomic(path, {"pid": os.getpid(), "node_id": node, "time": time.time(), **fields})


def epoch_line(row: dict, epochs: int) -> str:
    """One concise console line per epoch: loss, validation IoU/AP (when validated), img/s, time."""
    val = (
        f"  val IoU {row['val_iou']:.1f} AP {row['val_ap']:.1f} (best {row['best_val_iou']:.1f})"
        if math.isfinite(row.get("val_iou", math.nan))
        else ""
    )
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}{val}  "
        f"{row['images_per_s']:.1f} img/s  {row['epoch_s']:.0f}s"
    )


def _quiet_reports() -> None:
    """Ray Train logs every report's whole result dict at INFO from a logger named by its file path (outside
    ``ray.train``, so RunConfig's LoggingConfig misses it); the epoch line says what matters. ``dirl -v`` keeps it."""
    if verbose():
        return
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # another Ray version: its own logging stays as it is
        pass


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point. ``config``: cfg (Config as dict), run_id, tracking_uri, status_dir (optional)."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config["cfg"], "train_loop_config")
    tc = cfg.train
    _quiet_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    status = os.path.join(config["status_dir"], f"rank-{rank}.json") if config.get("status_dir") else None
    _write_status(status, rank=rank, epoch=None, phase="setup")

    seed_everything(tc.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if not cfg.cluster.use_gpu:
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()
    speed = SpeedConfig(tc.precision, tc.channels_last, tc.compile)
    if device.type == "cpu" and speed.precision == "fp16":
        speed = dataclasses.replace(speed, precision="bf16")

    kwargs = model_kwargs(cfg)
    model = prepare_speed(create_model(cfg.model.name, **kwargs), device, dataclasses.replace(speed, compile=False))
    from dirl.data.loader import ShardDataset

    size = cfg.model.input_size
    train_ds = ShardDataset(config["data_dirs"], "train", size, train=True, seed=tc.seed, jitter=tc.jitter)
    batch = local_batch_size(tc.batch_size, world)
    sync, note = use_sync_bn(tc.sync_bn, world, batch, device.type)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys as BatchNorm2d
    if note and rank == 0:
        emit(note)
    steps_per_epoch = (len(train_ds) // world) // batch
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_ds)} training composites give worker {rank} no full batch of {batch} rows; "
            f"lower train.batch_size or cluster.num_workers, or add data"
        )
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    scaler = make_grad_scaler(device, speed)
    loss_fn = DIRLLoss(lam=tc.lam if tc.lam is not None else 1.0)  # resolved by the stage (best.yaml or default)

    start_epoch, best, best_epoch, history = 0, -math.inf, None, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(d, model, optimizer, scheduler, scaler, map_location=device)
        start_epoch, history = int(state["epoch"]), list(state["history"])
        best = state["best"] if state["best"] is not None else -math.inf
        best_epoch = state["best_epoch"]

    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    if speed.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    logger = None
    if rank == 0 and config.get("run_id"):
        from dirl.tracking import MlflowEpochLogger

        logger = MlflowEpochLogger(config["tracking_uri"], config["run_id"])
        logger.log_params(cfg.to_dict())
        logger.sync(history)  # back-fill epochs checkpointed but not yet logged

    val_batches: Iterator[dict[str, Any]] | list[dict[str, Any]] | None = None
    if rank == 0:
        val_ds = ShardDataset(config["data_dirs"], "val", size, train=False)
        if len(val_ds) == 0:
            raise ValueError(f"no validation composites in {config['data_dirs']}: raise data.val_fraction")
        val_batches = val_ds.iter_batches(batch)
        if len(val_ds) * 4 * 4 * size * size <= VAL_CACHE_BYTES:  # deterministic: decode once, keep
            val_batches = list(val_batches)
    progress = None
    for epoch in range(start_epoch + 1, tc.epochs + 1):
        _write_status(status, rank=rank, epoch=epoch, phase="train")
        lr = optimizer.param_groups[0]["lr"]
        train_ds.set_epoch(epoch)
        batches = train_ds.iter_batches(batch, shuffle=True, drop_last=True, rank=rank, world=world, prefetch=PREFETCH)
        if rank == 0:
            progress = EpochProgress(epoch, tc.epochs, steps_per_epoch, world)
        stats = train_one_epoch(
            net,
            batches,
            loss_fn,
            optimizer,
            device,
            speed,
            scaler,
            steps_per_epoch,
            scheduler=scheduler,
            progress=progress,
        )
        if progress is not None:
            progress.close()

        row = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "lr": lr,
            "epoch_s": stats["seconds"],
            "images_per_s": stats["images_per_s"] * world,
            "step_s": stats["step_s"],
            "epoch_cpu_s": stats["cpu_s"],
            "steps": stats["steps"],
        }
        row.update({k: stats[k] for k in stats if k.startswith("loss_")})
        row.update({k: float("nan") for k in VAL_KEYS})
        if rank == 0 and (epoch % tc.val_every == 0 or epoch == tc.epochs):
            _write_status(status, rank=rank, epoch=epoch, phase="validate")
            if not isinstance(val_batches, list):
                val_batches = val_ds.iter_batches(batch)
            val = evaluate_batches(model, val_batches, device, speed, loss_fn)
            row.update({k: val[k] for k in VAL_KEYS})
            if val[SCORE] > best:
                best, best_epoch = val[SCORE], epoch
        row["best_val_iou"] = best if math.isfinite(best) else float("nan")
        history.append(row)
        if rank == 0:
            emit(epoch_line(row, tc.epochs))

        with tempfile.TemporaryDirectory(prefix="dirl-ckpt-") as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(
                    Path(tmp) / "ckpt",
                    model,
                    optimizer,
                    scheduler,
                    scaler,
                    epoch=epoch,
                    best=best if math.isfinite(best) else None,
                    best_epoch=best_epoch,
                    history=history,
                    config=cfg.to_dict(),
                    model_name=cfg.model.name,
                    model_kwargs=kwargs,
                )
                checkpoint = ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt"))
            ray.train.report(dict(row), checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch:04d}")
        if logger is not None:
            logger.sync(history)
    _write_status(status, rank=rank, epoch=tc.epochs, phase="done")
    return {"history": history, "best_val_iou": best if math.isfinite(best) else None, "best_epoch": best_epoch}


# ----------------------------------------------------------------------------- the TorchTrainer that runs it


def checkpoint_config(cfg: Config, trial: bool = False):
    """Keep only what resuming and the exported model need: the latest checkpoint (``train.checkpoint: last``, and
    every tune trial), or the best by validation IoU plus the latest (``best``). Disk: a dirl checkpoint holds the
    weights and Adam's two moments, about 3 x 205 MB; dirl_tiny's about 23 MB."""
    import ray.train

    if trial or cfg.train.checkpoint == "last":
        return ray.train.CheckpointConfig(num_to_keep=1)
    return ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=SCORE, checkpoint_score_order="max")


def build_trainer(
    cfg: Config,
    data_dirs: Sequence[str | os.PathLike],
    placement: Placement,
    name: str,
    storage: str,
    loop_config: dict,
    callbacks: Sequence = (),
    trial: bool = False,
):
    """The TorchTrainer of one training run (also used by the tune stage with its own callbacks, ``trial=True``)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": placement.cpus_per_worker}
    scaling = ray.train.ScalingConfig(
        num_workers=placement.num_workers,  # type: ignore[arg-type]  # (min, max): Train V2's elastic range
        use_gpu=placement.use_gpu,
        resources_per_worker=resources,
        placement_strategy=cfg.cluster.placement_strategy,
    )
    # ray.train is Train V2 at run time (RAY_TRAIN_V2_ENABLED); the type stubs describe V1's RunConfig and trainer
    run_config = ray.train.RunConfig(  # type: ignore[call-arg]
        name=name,
        storage_path=storage,
        failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
        checkpoint_config=checkpoint_config(cfg, trial),
        # Ray Train's INFO lines (worker group start, each report's result dict) only with `dirl -v`
        logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        callbacks=list(callbacks),
        worker_runtime_env={
            "env_vars": {
                k: os.environ[k]
                for k in ("MLFLOW_DISABLE_TELEMETRY", "DIRL_VERBOSE", "RAY_DATA_DISABLE_PROGRESS_BARS")
                if k in os.environ
            }
        },
    )
    return TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={
            **loop_config,
            "threads_per_worker": placement.threads_per_worker,
            "data_dirs": [str(Path(d).resolve()) for d in data_dirs],
        },
        torch_config=TorchConfig(backend="nccl" if placement.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )
