"""Ray: start-up, and how training workers and tune trials are placed on the cluster. Every ``ray.init`` is here.

    with ray_session(cfg) as resources:          # local Ray (cluster.address "") or an existing cluster
        placement = plan_workers(cfg, resources)   # worker count, CPUs and torch threads that fit
        plan = plan_trials(cfg, resources)         # tune trials at once, and each trial's share

A worker group that cannot be placed makes Ray Train V2 retry forever, so both plans lower what was asked to
what fits, with a note saying so. ``storage_path`` is where Ray keeps run folders and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from dirl import workspace
from dirl.config import Config, ConfigError
from dirl.progress import verbose

DRIVER_CPU_RESERVE = 0.1  # CPUs left free for the Tune trial driver and Ray's own tasks
DRIVER_CPU = 0.01  # a tune trial's driver only waits on fit(); {"cpu": 0} is refused by Tune
SMALL_CLUSTER_CPUS = 4  # below this, trials run one at a time (concurrent trials deadlock, Ray issue 54305)


def storage_path(cfg: Config, root: Path | None = None) -> str:
    """Absolute storage path (or URI) for Ray run folders: ``cluster.storage_path``, else ``$DIRL_STORAGE_PATH``,
    else ``ray_results`` in the state root (:mod:`dirl.workspace`)."""
    sp = cfg.cluster.storage_path or os.environ.get("DIRL_STORAGE_PATH", "")
    if not sp:
        return str(workspace.ray_results(root).resolve())
    if "://" in sp:
        return sp
    p = Path(sp)
    return str((p if p.is_absolute() else workspace.root(root) / p).resolve())


def ray_env() -> None:
    """Environment for a quiet, non-interactive Ray (set before ``ray.init``, inherited by its workers).

    By default the console shows the pipeline's own lines only: Ray's INFO logs, its result dicts, backend
    and, off a TTY, the ANSI colours of its log prefixes are off. ``dirl -v``
    (``$DIRL_VERBOSE``) leaves Ray as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not verbose():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's experiment box and TensorBoard hints: off
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _logging_kwargs() -> dict:
    if verbose():
        return {}
    return {"logging_level": logging.ERROR}


def init_ray(cfg: Config) -> bool:
    """Start or connect to Ray per ``cluster``; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray_env()
    address = cfg.cluster.address.strip()
    if address:
        try:
            ray.init(address=address, log_to_driver=True, **_logging_kwargs())
        except (ConnectionError, RuntimeError) as e:
            raise ConnectionError(
                f"cannot connect to the Ray cluster at cluster.address = {address!r} ({e}); "
                f'start it with `ray start --head` or set cluster.address to "" for a '
                f"local Ray"
            ) from None
    else:
        if os.environ.pop("RAY_ADDRESS", None):  # "" means a private local Ray, even in a cluster shell
            print(
                "cluster.address is empty: starting a local Ray (ignoring $RAY_ADDRESS; set cluster.address: auto "
                "to use that cluster)",
                file=sys.stderr,
            )
        # a private local Ray has no preemptible nodes: no preemption watcher (and none of its start-up noise)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(num_cpus=cfg.cluster.num_cpus or None, **_logging_kwargs())
    return True


def drop_trial_checkpoints(storage: str, name: str) -> int:
    """After a search, delete the tune trials' Ray Train run folders (``<storage>/<name>/train-*``: their
    checkpoints only served ASHA and resuming the trial); Tune's own records of the search stay. Local storage only
    (a ``://`` URI is left as it is). Returns the bytes freed."""
    import shutil

    if "://" in storage:
        return 0
    freed = 0
    for run in (Path(storage) / name).glob("train-*"):
        if run.is_dir():
            freed += sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
            shutil.rmtree(run, ignore_errors=True)
    return freed


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[dict[str, float]]:
    """Start or connect to Ray (:func:`init_ray`), yield ``ray.cluster_resources()``; shut down what it started."""
    import ray

    started = init_ray(cfg)
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


@dataclasses.dataclass
class Placement:
    """How the worker group is sized on the cluster, and why."""

    num_workers: int | tuple[int, int]
    cpus_per_worker: float
    use_gpu: bool
    threads_per_worker: int
    notes: list[str]


def plan_workers(cfg: Config, resources: dict[str, float]) -> Placement:
    """Fit ``cluster.num_workers`` x ``cluster.cpus_per_worker`` into ``resources`` (``ray.cluster_resources()``).

    Keeps ``DRIVER_CPU_RESERVE`` CPUs free (the Tune trial driver); lowers the worker count (the elastic minimum when
    ``cluster.min_workers`` is set) when the group would not fit: a worker group that cannot be placed makes
    Ray Train V2 retry forever.
    """
    tc = cfg.cluster
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    notes = []
    if tc.use_gpu and gpus < 1:
        raise ConfigError(
            f"cluster.use_gpu is true but the Ray cluster has no GPU (resources {resources}); "
            f"set cluster.use_gpu false or connect to a cluster with GPUs (cluster.address)"
        )
    per = tc.cpus_per_worker
    budget = cpus - DRIVER_CPU_RESERVE
    if per > budget:
        want = max(1, min(tc.min_workers or tc.num_workers, tc.num_workers))
        new = max(0.1, round(budget / want, 2)) if budget > 0 else 0.1
        notes.append(
            f"cluster.cpus_per_worker {per} does not fit {cpus:g} CPUs ({DRIVER_CPU_RESERVE} kept for the "
            f"drivers): using {new}"
        )
        per = new
    fit = max(1, int((budget + 1e-9) // per)) if budget > 0 else 1
    if tc.use_gpu:
        fit = min(fit, int(gpus))
    num_workers: int | tuple[int, int]
    if tc.min_workers:  # elastic: the minimum must fit now; Ray grows the group towards the maximum later
        lo = min(tc.min_workers, tc.num_workers, fit)
        if lo < min(tc.min_workers, tc.num_workers):
            notes.append(
                f"cluster.min_workers {tc.min_workers} does not fit the cluster ({cpus:g} CPUs, {gpus:g} "
                f"GPUs, {per} CPU per worker): starting from {lo}"
            )
        num_workers = (lo, tc.num_workers) if lo < tc.num_workers else lo
    else:
        num_workers = min(tc.num_workers, fit)
        if num_workers < tc.num_workers:
            notes.append(
                f"cluster.num_workers {tc.num_workers} does not fit the cluster ({cpus:g} CPUs, {gpus:g} "
                f"GPUs, {per} CPU per worker): using {num_workers}"
            )
    # torch threads = the CPUs the worker reserved, rounded (at least 1): more threads than reserved CPUs
    # oversubscribe the cores, and OpenMP threads that wait for a core spin (measured on 2 busy cores: 2 threads
    # ran a UNet step 4-20x slower than 1)
    threads = int(tc.threads_per_worker or max(1, int(round(per))))
    return Placement(num_workers, per, tc.use_gpu, threads, notes)


@dataclasses.dataclass
class TrialPlan:
    """How many trials run at once and the cluster share each trial sizes its worker group in."""

    max_concurrent: int
    share: dict[str, float]
    notes: list[str]


def plan_trials(cfg: Config, resources: dict[str, float]) -> TrialPlan:
    """Fit ``cluster.max_concurrent_trials`` trials into ``resources`` (``ray.cluster_resources()``).

    Each trial needs its driver (``DRIVER_CPU``), its workers and the drivers reserve; on fewer than
    ``SMALL_CLUSTER_CPUS`` CPUs trials run one at a time (Ray issue 54305: concurrent trials deadlock on 2 CPUs).
    """
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    want = cfg.cluster.max_concurrent_trials
    notes = []
    if cpus < SMALL_CLUSTER_CPUS:
        fit = 1
    else:
        need = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker + DRIVER_CPU_RESERVE + DRIVER_CPU
        fit = max(1, int(cpus // need))
    if cfg.cluster.use_gpu and gpus >= 1:
        fit = min(fit, max(1, int(gpus // cfg.cluster.num_workers)))
    n = max(1, min(want, fit))
    if n < want:
        notes.append(
            f"cluster.max_concurrent_trials {want} does not fit the cluster ({cpus:g} CPUs, {gpus:g} GPUs): "
            f"running {n} trial(s) at a time"
        )
    share = {"CPU": cpus / n, "GPU": gpus / n if gpus >= n else gpus}
    return TrialPlan(n, share, notes)


def data_workers(cfg: Config) -> int:
    """Processes of the data stages on this machine: ``cluster.data_workers``, 0 = every core this process may use."""
    return cfg.cluster.data_workers or len(os.sched_getaffinity(0))
