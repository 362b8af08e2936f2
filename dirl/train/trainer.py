"""The train stage: Ray Train (TorchTrainer, DDP) over Ray Data shards, tracked in one MLflow run.

    from dirl.config import load_config
    from dirl.train import train
    out = train(load_config("params.yaml"), out_dir="results/train")
    out["run_id"], out["metrics"]["best_val_iou"]

What :func:`train` does:

1. fills the tuned keys that params.yaml leaves null (``train.lr``, ``train.weight_decay``, ``train.lam``) from
   ``results/tune/best.yaml`` (:func:`resolve_tuned`; an explicit value wins) and logs where each came from;
2. starts a local Ray (``cluster.address`` empty) or connects to ``auto`` / ``ray://host:port``;
3. sizes the worker group from ``ray.cluster_resources()`` so that it can always be placed and leaves CPU
   for the Ray Data decode tasks (a worker group that cannot be placed retries forever in Ray Train V2);
4. creates (or, on resume, reopens) the MLflow run in the driver; workers log into it by id;
5. runs ``TorchTrainer.fit()``: checkpoints every epoch under ``<storage_path>/<name>``; the name is derived
   from the model, the training settings, the data and the code, so running again with the same settings (more
   epochs, or after a crash) resumes that run from its last checkpoint, while new settings start a new one;
6. brings the small outputs into ``out_dir``: ``model.pt`` (best weights by validation IoU), ``metrics.json``,
   ``history.csv``, ``learning_curve.png``, ``run.json`` and the resolved ``config.yaml``, and logs them to MLflow.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from dirl import tracking
from dirl.config import TUNED_DEFAULTS, Config, ConfigError, ModelConfig, TrainConfig, config_from_dict, \
    save_resolved, tracking_uri, workspace_root
from dirl.train.checkpoint import export_model, load_checkpoint
from dirl.train.worker import SCORE, train_loop_per_worker

log = logging.getLogger("dirl.train")

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_ap", "val_f1", "val_iou", "lr"]
DRIVER_CPU_RESERVE = 0.1  # CPUs left free for the Tune trial driver and Ray's own tasks
RUN_FILE = "dirl_run.json"  # beside Ray's files in <storage>/<name>: the MLflow run this Ray run logs into
# train keys that do not change what is learnt: a run differing only in these resumes the same Ray run
RESUMABLE_KEYS = ("epochs", "val_every", "max_failures", "storage_path", "num_workers", "min_workers",
                  "cpus_per_worker", "use_gpu", "use_tune_best", "checkpoint")


# ----------------------------------------------------------------------------- configuration


def _read_tune_file(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """``({"train.lr": .., ..}, searched)`` from a hyperparameter file; ``searched`` is None when it does not say.

    Accepted layouts: ``{train: {lr: ..}, model: {..}}``, dotted ``{"train.lr": ..}``, or bare keys of the
    ``train`` (or ``model``) section ``{lr: .., weight_decay: ..}``; a ``config``/``params`` wrapper is unwrapped.
    Keys that are neither are ignored (tune writes its metrics beside them), and so are null values. The tune
    stage's ``tune`` block says which keys it searched (``searched``) or that it was ``skipped``.
    """
    try:
        best = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); rerun the tune stage or set train.use_tune_best false")
    if not isinstance(best, dict):
        raise ConfigError(f"{path}: expected a mapping of hyperparameters, got {type(best).__name__}")
    info = best.get("tune") if isinstance(best.get("tune"), dict) else {}
    searched = info.get("searched")
    searched = [str(k) for k in searched] if isinstance(searched, list) else ([] if info.get("skipped") else None)
    for wrapper in ("config", "params", "best_config", "hyperparameters"):
        if isinstance(best.get(wrapper), dict):
            best = best[wrapper]
            break
    fields = {"train": {f.name for f in dataclasses.fields(TrainConfig)},
              "model": {f.name for f in dataclasses.fields(ModelConfig)}}
    values: dict[str, Any] = {}
    for key, value in best.items():
        if isinstance(value, dict) and key in fields:
            values.update({f"{key}.{k}": v for k, v in value.items() if k in fields[key]})
        elif "." in str(key) and str(key).split(".", 1)[0] in fields:
            section, k = str(key).split(".", 1)
            if k in fields[section]:
                values[str(key)] = value
        elif key in fields["train"]:
            values[f"train.{key}"] = value
        elif key in fields["model"]:
            values[f"model.{key}"] = value
    return {k: v for k, v in values.items() if v is not None}, searched


def resolve_tuned(cfg: Config, best_yaml_path: str | os.PathLike | None) -> tuple[Config, dict[str, str]]:
    """Give every tuned key (``TUNED_DEFAULTS``: train.lr, weight_decay, lam) a number; return (cfg, sources).

    A number in ``cfg`` (params.yaml, ``dvc exp run -S``) is kept: source ``"params.yaml"``. A null is filled
    from ``best_yaml_path`` (the tune stage's ``best.yaml``) when that file holds a value the tune stage
    searched (source ``"tune"``), else from ``TUNED_DEFAULTS`` (``"default"``): tune disabled or skipped, the key
    not searched, no file, ``best_yaml_path`` None, or ``train.use_tune_best`` false (best.yaml ignored). A file
    without a ``tune`` block (hand-written) counts as searched. The input config is not changed; a bad value in
    the file raises :class:`ConfigError` naming the file and the key.
    """
    path = Path(best_yaml_path) if best_yaml_path else None
    use_file = cfg.train.use_tune_best and path is not None and path.is_file()
    best, searched = _read_tune_file(path) if use_file else ({}, [])
    data = cfg.to_dict()
    sources: dict[str, str] = {}
    from_file = False
    for key, default in TUNED_DEFAULTS.items():
        section, name = key.split(".", 1)
        if data[section][name] is not None:
            sources[key] = "params.yaml"
        elif key in best and (searched is None or key in searched):
            data[section][name], sources[key], from_file = best[key], "tune", True
        else:
            data[section][name], sources[key] = default, "default"
    return config_from_dict(data, str(path) if from_file else "TUNED_DEFAULTS"), sources


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


def default_data_dirs(root: Path) -> list[Path]:
    """``data/shards`` and ``data/synth`` of the workspace, those that hold a manifest."""
    dirs = [root / "data" / "shards", root / "data" / "synth"]
    found = [d for d in dirs if (d / "manifest.json").is_file()]
    if not found:
        raise FileNotFoundError(f"no shards in {dirs[0]} or {dirs[1]}: run the preprocess (and synth) stages "
                                f"first (`dvc repro preprocess`), or pass data_dirs")
    return found


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


def storage_path(cfg: Config, root: Path) -> str:
    """Absolute storage path (or URI) for Ray checkpoints; default ``<workspace>/ray_results``."""
    sp = cfg.train.storage_path or os.environ.get("DIRL_STORAGE_PATH", "")
    if not sp:
        return str((root / "ray_results").resolve())
    if "://" in sp:
        return sp
    p = Path(sp)
    return str((p if p.is_absolute() else root / p).resolve())


# ----------------------------------------------------------------------------- Ray


def ray_env() -> None:
    """Environment for a quiet, non-interactive Ray (set before ``ray.init``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def init_ray(cfg: Config) -> bool:
    """Start or connect to Ray per ``cluster``; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray_env()
    address = cfg.cluster.address.strip()
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise ConnectionError(f"cannot connect to the Ray cluster at cluster.address = {address!r} ({e}); "
                                  f"start it with `ray start --head` or set cluster.address to \"\" for a "
                                  f"local Ray") from None
    else:
        if os.environ.pop("RAY_ADDRESS", None):  # "" means a private local Ray, even in a cluster shell
            print("cluster.address is empty: starting a local Ray (ignoring $RAY_ADDRESS; set cluster.address: auto "
                  "to use that cluster)", file=sys.stderr)
        ray.init(num_cpus=cfg.cluster.num_cpus or None)
    return True


@dataclasses.dataclass
class Placement:
    """How the worker group is sized on the cluster, and why."""

    num_workers: int | tuple[int, int]
    cpus_per_worker: float
    use_gpu: bool
    threads_per_worker: int
    notes: list[str]


def plan_workers(cfg: Config, resources: dict[str, float]) -> Placement:
    """Fit ``train.num_workers`` x ``train.cpus_per_worker`` into ``resources`` (``ray.cluster_resources()``).

    Keeps ``DRIVER_CPU_RESERVE`` CPUs free (the Tune trial driver); lowers the worker count (the elastic minimum when
    ``train.min_workers`` is set) when the group would not fit: a worker group that cannot be placed makes
    Ray Train V2 retry forever.
    """
    tc = cfg.train
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    notes = []
    if tc.use_gpu and gpus < 1:
        raise ConfigError(f"train.use_gpu is true but the Ray cluster has no GPU (resources {resources}); "
                          f"set train.use_gpu false or connect to a cluster with GPUs (cluster.address)")
    per = tc.cpus_per_worker
    budget = cpus - DRIVER_CPU_RESERVE
    if per > budget:
        want = max(1, min(tc.min_workers or tc.num_workers, tc.num_workers))
        new = max(0.1, round(budget / want, 2)) if budget > 0 else 0.1
        notes.append(f"train.cpus_per_worker {per} does not fit {cpus:g} CPUs ({DRIVER_CPU_RESERVE} kept for the "
                     f"drivers): using {new}")
        per = new
    fit = max(1, int((budget + 1e-9) // per)) if budget > 0 else 1
    if tc.use_gpu:
        fit = min(fit, int(gpus))
    num_workers: int | tuple[int, int]
    if tc.min_workers:  # elastic: the minimum must fit now; Ray grows the group towards the maximum later
        lo = min(tc.min_workers, tc.num_workers, fit)
        if lo < min(tc.min_workers, tc.num_workers):
            notes.append(f"train.min_workers {tc.min_workers} does not fit the cluster ({cpus:g} CPUs, {gpus:g} "
                         f"GPUs, {per} CPU per worker): starting from {lo}")
        num_workers = (lo, tc.num_workers) if lo < tc.num_workers else lo
    else:
        num_workers = min(tc.num_workers, fit)
        if num_workers < tc.num_workers:
            notes.append(f"train.num_workers {tc.num_workers} does not fit the cluster ({cpus:g} CPUs, {gpus:g} "
                         f"GPUs, {per} CPU per worker): using {num_workers}")
    # torch threads = the CPUs the worker reserved, rounded (at least 1): more threads than reserved CPUs
    # oversubscribe the cores, and OpenMP threads that wait for a core spin (measured on 2 busy cores: 2 threads
    # ran a UNet step 4-20x slower than 1)
    threads = int(tc.threads_per_worker or max(1, int(round(per))))
    return Placement(num_workers, per, tc.use_gpu, threads, notes)


def build_trainer(cfg: Config, data_dirs: Sequence[str | os.PathLike], placement: Placement, name: str,
                  storage: str, loop_config: dict, callbacks: Sequence = ()):
    """The TorchTrainer of one training run (also used by the tune stage with its own callbacks)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": placement.cpus_per_worker}
    scaling = ray.train.ScalingConfig(num_workers=placement.num_workers, use_gpu=placement.use_gpu,
                                      resources_per_worker=resources,
                                      placement_strategy=cfg.train.placement_strategy)
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=SCORE,
                                                     checkpoint_score_order="max"),
        callbacks=list(callbacks),
        worker_runtime_env={"env_vars": {k: os.environ[k] for k in ("MLFLOW_DISABLE_TELEMETRY",
                                                                   "RAY_DATA_DISABLE_PROGRESS_BARS")
                                         if k in os.environ}},
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "threads_per_worker": placement.threads_per_worker,
                           "data_dirs": [str(Path(d).resolve()) for d in data_dirs]},
        torch_config=TorchConfig(backend="nccl" if placement.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )


# ----------------------------------------------------------------------------- MLflow run


def _open_run(cfg: Config, root: Path, run_dir: Path | None, name: str, parent_run_id: str | None,
              data_dirs: Sequence[str | os.PathLike], resume: bool) -> tuple[str, str, str, bool]:
    """Create the MLflow run, or reopen the one recorded in ``run_dir`` on resume: (run_id, exp_id, uri, reopened).

    ``run_dir`` is None for a storage URI (s3://...): the record is not kept and each call opens a new run
    (a resumed Ray run then back-fills its earlier epochs into it).
    """
    import mlflow

    exp_id = tracking.setup(cfg, root)
    uri = tracking_uri(cfg, root)
    client = mlflow.MlflowClient(uri)
    record = run_dir / RUN_FILE if run_dir is not None else None
    if resume and record is not None and record.is_file():
        try:
            prev = json.loads(record.read_text())
            run = client.get_run(prev["run_id"])
            if run.info.lifecycle_stage == "active" and prev.get("tracking_uri") == uri:
                client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id, run.info.experiment_id, uri, True
        except (ValueError, KeyError, mlflow.exceptions.MlflowException):
            pass  # unreadable record or a run of another store: start a new MLflow run
    tags = {"ray_run_name": name, "stage": "train", "model": cfg.model.name, "code_digest": code_digest(),
            **tracking.provenance_tags(root, data_dirs)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=f"train-{name}", tags=tags)
    if record is not None:
        _write_text(record, json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri}))
    return run.info.run_id, exp_id, uri, False


# ----------------------------------------------------------------------------- outputs


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def write_history_csv(history: list[dict], path: Path) -> Path:
    """One row per epoch (HISTORY_COLUMNS); empty cells where an epoch was not validated."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for row in history:
        w.writerow([int(row["epoch"])] + ["" if _num(row.get(k)) is None else f"{_num(row[k]):.6g}"
                                          for k in HISTORY_COLUMNS[1:]])
    _write_text(path, buf.getvalue())
    return path


def plot_learning_curve(history: list[dict], path: Path) -> Path:
    """Train/val loss and validation IoU per epoch as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [_num(r.get("train_loss")) for r in history], "o-", label="train")
    val = [(r["epoch"], _num(r.get("val_loss"))) for r in history if _num(r.get("val_loss")) is not None]
    if val:
        ax1.plot(*zip(*val), "s-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("DIRL loss")
    ax1.legend()
    iou = [(r["epoch"], _num(r.get("val_iou"))) for r in history if _num(r.get("val_iou")) is not None]
    if iou:
        ax2.plot(*zip(*iou), "s-", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val IoU (x100)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _best_checkpoint(result, select: str = "best"):
    """The reported checkpoint with the highest finite val_iou (the latest when none was validated);
    ``select="last"``: the last epoch's checkpoint."""
    if select == "last":
        return result.checkpoint, None
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if _num((m or {}).get(SCORE)) is not None]
    if not scored:
        return result.checkpoint, None
    return max(scored, key=lambda cm: cm[1][SCORE])


# ----------------------------------------------------------------------------- the stage


def train(cfg: Config, out_dir: str | os.PathLike = "results/train", parent_run_id: str | None = None, *,
          data_dirs: Sequence[str | os.PathLike] | None = None, name: str | None = None, resume: bool = True,
          root: str | os.PathLike | None = None, tune_best: str | os.PathLike | None = None,
          status_dir: str | os.PathLike | None = None) -> dict:
    """Train ``cfg.model`` with Ray Train and write the outputs into ``out_dir``; return a summary.

    ``data_dirs``: shard folders (default ``data/shards`` and ``data/synth`` of the workspace).
    ``name``: Ray run name (default :func:`run_name`); an existing run of that name in the storage path is
    resumed from its last checkpoint unless ``resume`` is False (then a fresh, timestamped name is used).
    ``tune_best``: the tune stage's file (default ``<workspace>/results/tune/best.yaml``): it fills the tuned
    keys that ``cfg`` leaves null (:func:`resolve_tuned`; an explicit value wins); where each value came from is
    printed and recorded as the MLflow tag ``tuned_sources``. ``status_dir``: workers write ``rank-N.json``
    (pid, epoch).
    Returns ``{"run_id", "experiment_id", "tracking_uri", "name", "checkpoint", "metrics", "history",
    "resumed", "out_dir", "fit_s", "setup_s"}``.
    """
    import ray

    from dirl.data.shards import check_shards

    t_start = time.perf_counter()
    root = Path(root).resolve() if root else workspace_root()
    out_dir = Path(out_dir)
    tune_best = Path(tune_best) if tune_best else root / "results" / "tune" / "best.yaml"
    cfg, tuned = resolve_tuned(cfg, tune_best)
    shown = {k: getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in tuned}
    print("tuned values: " + ", ".join(f"{k}={shown[k]} ({src}{': ' + str(tune_best) if src == 'tune' else ''})"
                                       for k, src in tuned.items()), file=sys.stderr, flush=True)
    dirs = [Path(d).resolve() for d in data_dirs] if data_dirs else default_data_dirs(root)
    check_shards(dirs)  # a bad shard is a data error: fail here, in one line, before Ray starts
    storage = storage_path(cfg, root)
    name = name or run_name(cfg, dirs)
    run_dir = Path(storage) / name if "://" not in storage else None
    if not resume and run_dir is not None and run_dir.exists():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(storage) / name
    resumed = run_dir is not None and (run_dir / "checkpoint_manager_snapshot.json").is_file()

    started = init_ray(cfg)
    try:
        placement = plan_workers(cfg, ray.cluster_resources())
        for note in placement.notes:
            log.warning(note)
        run_id, exp_id, uri, _ = _open_run(cfg, root, run_dir, name, parent_run_id, dirs, resume)
        import mlflow

        client = mlflow.MlflowClient(uri)
        try:
            client.set_tag(run_id, "tuned_sources", json.dumps(tuned, sort_keys=True))
            loop_config = {"cfg": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri,
                           "status_dir": str(status_dir) if status_dir else None}
            trainer = build_trainer(cfg, dirs, placement, name, storage, loop_config)
            setup_s = time.perf_counter() - t_start
            t_fit = time.perf_counter()
            result = trainer.fit()
            fit_s = time.perf_counter() - t_fit
            if result.checkpoint is None:
                raise RuntimeError(f"training run {name} finished without a checkpoint; "
                                   f"see {Path(storage) / name}")
            summary = _write_outputs(cfg, result, out_dir, client, run_id, exp_id, uri, name, storage,
                                     resumed, fit_s, setup_s)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return summary
    finally:
        if started:
            ray.shutdown()


def _write_outputs(cfg: Config, result, out_dir: Path, client, run_id: str, exp_id: str, uri: str, name: str,
                   storage: str, resumed: bool, fit_s: float, setup_s: float) -> dict:
    """model.pt, metrics.json, history.csv, learning_curve.png, run.json, config.yaml; and log them to MLflow."""
    from mlflow.entities import Metric

    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d, restore_rng=False)
    history = state["history"]
    best_ckpt, best_metrics = _best_checkpoint(result, cfg.train.checkpoint)
    best_epoch = int(best_metrics["epoch"]) if best_metrics else state.get("best_epoch")
    if cfg.train.checkpoint == "last":
        best_epoch = int(history[-1]["epoch"])
    best_row = next((r for r in history if r["epoch"] == best_epoch), None) or history[-1]
    last = history[-1]
    metrics = {
        "best_epoch": int(best_row["epoch"]),
        "best_val_iou": _num(best_row.get("val_iou")),
        "val_iou": _num(best_row.get("val_iou")),
        "val_ap": _num(best_row.get("val_ap")),
        "val_f1": _num(best_row.get("val_f1")),
        "val_loss": _num(best_row.get("val_loss")),
        "epochs": int(last["epoch"]),
        "final_train_loss": _num(last.get("train_loss")),
        "images_per_s": _num(last.get("images_per_s")),
        "fit_s": round(fit_s, 2),
        "setup_s": round(setup_s, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with best_ckpt.as_directory() as d:
        export_model(d, out_dir / "model.pt", metrics={k: metrics[k] for k in ("best_epoch", "val_iou", "val_ap",
                                                                              "val_f1")})
    _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_history_csv(history, out_dir / "history.csv")
    plot_learning_curve(history, out_dir / "learning_curve.png")
    save_resolved(cfg, out_dir)
    run_info = {"run_id": run_id, "experiment_id": exp_id, "tracking_uri": uri, "name": name,
                "storage_path": storage, "checkpoint": result.checkpoint.path, "best_checkpoint": best_ckpt.path,
                "resumed": resumed}
    _write_text(out_dir / "run.json", json.dumps(run_info, indent=2) + "\n")

    ts = int(time.time() * 1000)
    step = metrics["epochs"]
    summary = [Metric(f"best_{k}", v, ts, step) for k, v in metrics.items()
               if k in ("val_iou", "val_ap", "val_f1", "val_loss") and v is not None]
    client.log_batch(run_id, metrics=summary)
    client.set_tag(run_id, "best_epoch", str(metrics["best_epoch"]))
    for f in ("config.yaml", "history.csv", "learning_curve.png", "metrics.json"):
        client.log_artifact(run_id, str(out_dir / f))
    client.log_artifact(run_id, str(out_dir / "model.pt"), "weights")  # `dirl predict --model <run id>` works
    return {**run_info, "metrics": metrics, "history": history, "out_dir": str(out_dir), "fit_s": fit_s,
            "setup_s": setup_s}
