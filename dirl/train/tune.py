"""The tune stage: Ray Tune (ASHA) over short Ray Train runs, one MLflow child run per trial.

    from dirl.config import load_config
    from dirl.train.tune import tune
    out = tune(load_config("params.yaml"), out_dir="results/tune")
    out["best_value"], out["best"]          # e.g. 41.2, {"train.lr": 0.00012, "train.weight_decay": 0.0}

Search space (``tune.search_space`` in params.yaml): ``key -> {kind: args}``::

    lr:               {loguniform: [3.0e-5, 3.0e-4]}    # tune.loguniform(lo, hi), 0 < lo < hi
    lam:              {uniform: [0.5, 2.0]}             # tune.uniform(lo, hi)
    weight_decay:     {choice: [0.0, 1.0e-4]}           # tune.choice(values)
    train.lr:         {grid: [1.0e-4, 3.0e-4]}          # tune.grid_search(values): every value, num_samples times
    # {randint: [lo, hi]} (hi excluded) too

A key is ``train.<field>`` or a bare train field. Only the tuned keys of ``dirl.config.TUNED_DEFAULTS``
(``train.lr``, ``train.weight_decay``, ``train.lam``) can be searched, and only where params.yaml leaves them
null, which means "use the tune stage's value": a key set to a number (in params.yaml or by ``dvc exp run -S``)
wins, so it is not searched (:func:`plan_search` prints a note), and when no key is left to search the stage
behaves as with ``tune.enabled: false``. To make another key searchable, add it to ``TUNED_DEFAULTS``.

How a search runs (the Ray Train V2 pattern: a TorchTrainer cannot be handed to a Tuner):

1. the Tuner's trainable is :func:`run_trial`, a driver that holds 0.01 CPU; it builds the trial's config
   (params.yaml + the sampled values), opens the trial's MLflow child run, and calls ``TorchTrainer.fit()`` with
   ``TuneReportCallback`` so that every epoch's metrics reach Tune (and its ASHA scheduler);
2. trials run ``max_concurrent`` at a time: 1 on a cluster with fewer than 4 CPUs, else as many as fit next to
   each other with their Ray Data reserve; each trial's worker group is sized by ``plan_workers`` within its share
   of ``ray.cluster_resources()``, so a trial can always be placed (an unplaceable group retries forever);
3. ASHA (``tune.grace_period``, ``tune.reduction_factor``, ``max_t = tune.epochs``) stops weak trials at its rungs
   (status ``stopped``); a trial that raises is recorded (status ``failed`` and its error in ``trials.csv``,
   ``summary.json`` and its MLflow run) and the search goes on; the stage fails only when no trial scored;
4. the best trial is the one with the best epoch by ``tune.metric`` (max, or min for ``val_loss``), as the train
   stage keeps its best epoch's weights.

MLflow: one parent run per execution (the tune settings, then the best values as ``best.<key>`` params, the best
score and the trial counts, and the output files), one child run per trial (``mlflow.parentRunId``, tag
``trial_id``): its config as flat params, metrics per epoch at ``step=epoch``, status FINISHED or FAILED with an
``error`` tag, and a ``tune.status`` tag (ok, stopped, failed).

Outputs in ``out_dir``: ``best.yaml`` (``{train: {lr: .., weight_decay: .., lam: ..}, tune: {..}}``: every tuned key
with the value the train stage will use: the best trial's for a searched key, else the explicit value or the
default; the ``tune`` block holds the score and the ``searched`` keys), ``summary.json`` (DVC metrics),
``trials.csv`` (one row per trial) and the resolved ``config.yaml``. ``dvc.yaml`` declares best.yaml's keys as
params of the train stage, so ``dvc params diff`` and ``dvc exp show`` show the values used; the train stage
reads them with :func:`dirl.train.trainer.resolve_tuned`. With ``tune.enabled: false`` (or nothing left to
search) no trial runs and ``best.yaml`` holds the explicit values and defaults (``searched: []``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import yaml

from dirl import tracking
from dirl.config import TUNED_DEFAULTS, Config, ConfigError, canonical_key, config_from_dict, \
    parse_search_space, save_resolved, tracking_uri, workspace_root  # noqa: F401 (canonical_key: re-exported)
from dirl.data.shards import check_shards
from dirl.train.trainer import DRIVER_CPU_RESERVE, build_trainer, default_data_dirs, init_ray, plan_workers, \
    resolve_tuned, storage_path

log = logging.getLogger("dirl.tune")

DRIVER_CPU = 0.01  # the trial driver only waits on fit(); {"cpu": 0} is refused by Tune
SMALL_CLUSTER_CPUS = 4  # below this, trials run one at a time (concurrent trials deadlock, Ray issue 54305)
TRIAL_COLUMNS = ["trial_id", "status"]  # then the searched keys, the metric, epochs, seconds, run id, error


def metric_mode(metric: str) -> str:
    """``"min"`` for a loss, ``"max"`` for a score."""
    return "min" if metric.endswith("loss") else "max"


# ----------------------------------------------------------------------------- search space


def plan_search(cfg: Config) -> tuple[dict[str, tuple[str, list]], list[str]]:
    """The part of ``tune.search_space`` to search, and notes: ``(parsed space, notes)``.

    A key is searched only where ``cfg`` leaves it null ("use the tune stage's value"); a key set to a number
    (params.yaml, ``dvc exp run -S``) is used as set by the train stage, so it is not searched and a note says
    so. Raises :class:`ConfigError` for a key that is not a tuned key (``TUNED_DEFAULTS``).
    """
    parsed = parse_search_space(cfg.tune.search_space)
    search: dict[str, tuple[str, list]] = {}
    notes: list[str] = []
    for key, spec in parsed.items():
        if key not in TUNED_DEFAULTS:
            raise ConfigError(f"tune.search_space: {key} cannot be searched: the searchable keys are "
                              f"{', '.join(TUNED_DEFAULTS)} (see TUNED_DEFAULTS in dirl/config.py)")
        value = current_values(cfg, [key])[key]
        if value is None:
            search[key] = spec
        else:
            notes.append(f"{key} = {value!r} is set in params.yaml: not searched, the train stage uses it "
                         f"(set it to null to tune it)")
    return search, notes


def param_space(parsed: dict[str, tuple[str, list]]) -> dict:
    """Ray Tune samplers for a parsed search space, keyed by the canonical dotted key."""
    from ray import tune

    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(*a), "choice": tune.choice, "grid": tune.grid_search}
    return {key: make[kind](args) for key, (kind, args) in parsed.items()}


def _plain(v: Any) -> Any:
    """numpy scalars (Tune's samplers) -> Python values, so configs validate and YAML stays plain."""
    return v.item() if hasattr(v, "item") and callable(v.item) else v


def trial_config(cfg: Config | dict, values: dict[str, Any], epochs: int, src: str = "tune trial") -> Config:
    """``cfg`` with the dotted ``values`` set, ``epochs`` epochs, validation every epoch, no best.yaml; a tuned
    key still null (not in the search space) takes its default (``TUNED_DEFAULTS``), as in the train stage."""
    data = cfg.to_dict() if isinstance(cfg, Config) else json.loads(json.dumps(cfg))
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = _plain(value)
    data["train"].update(epochs=epochs, val_every=1, use_tune_best=False)
    if data.get("tune", {}).get("max_steps_per_epoch"):
        data["train"]["max_steps_per_epoch"] = data["tune"]["max_steps_per_epoch"]
    return resolve_tuned(config_from_dict(data, src), None)[0]


def current_values(cfg: Config, keys: Sequence[str]) -> dict[str, Any]:
    """``{"train.lr": cfg.train.lr, ...}`` for dotted keys."""
    return {k: getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in keys}


def nest(values: dict[str, Any]) -> dict[str, dict]:
    """``{"train.lr": 1e-4}`` -> ``{"train": {"lr": 1e-4}}`` (best.yaml's layout: DVC reads ``train.lr``)."""
    out: dict[str, dict] = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


# ----------------------------------------------------------------------------- resources


@dataclasses.dataclass
class TrialPlan:
    """How many trials run at once and the cluster share each trial sizes its worker group in."""

    max_concurrent: int
    share: dict[str, float]
    notes: list[str]


def plan_trials(cfg: Config, resources: dict[str, float]) -> TrialPlan:
    """Fit ``tune.max_concurrent`` trials into ``resources`` (``ray.cluster_resources()``).

    Each trial needs its driver (``DRIVER_CPU``), its workers and the drivers reserve; on fewer than
    ``SMALL_CLUSTER_CPUS`` CPUs trials run one at a time (Ray issue 54305: concurrent trials deadlock on 2 CPUs).
    """
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    want = cfg.tune.max_concurrent
    notes = []
    if cpus < SMALL_CLUSTER_CPUS:
        fit = 1
    else:
        need = cfg.train.num_workers * cfg.train.cpus_per_worker + DRIVER_CPU_RESERVE + DRIVER_CPU
        fit = max(1, int(cpus // need))
    if cfg.train.use_gpu and gpus >= 1:
        fit = min(fit, max(1, int(gpus // cfg.train.num_workers)))
    n = max(1, min(want, fit))
    if n < want:
        notes.append(f"tune.max_concurrent {want} does not fit the cluster ({cpus:g} CPUs, {gpus:g} GPUs): "
                     f"running {n} trial(s) at a time")
    share = {"CPU": cpus / n, "GPU": gpus / n if gpus >= n else gpus}
    return TrialPlan(n, share, notes)


# ----------------------------------------------------------------------------- the trial driver


def _error_text(e: BaseException) -> tuple[str, str]:
    """(one line: the innermost ``Type: message``, the full text) of an exception from a trial."""
    full = f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    short = next((ln for ln in reversed(lines) if ":" in ln and ln.split(":", 1)[0].replace(".", "").isidentifier()
                  and ("Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0])), None)
    return (short or (f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__))[:500], full[:5000]


def _record_failure(client, run_id: str, e: BaseException) -> None:
    short, full = _error_text(e)
    client.set_tag(run_id, "error", short)
    client.set_tag(run_id, "error_detail", full)
    client.set_tag(run_id, "tune.status", "failed")
    client.set_terminated(run_id, status="FAILED")


def run_trial(config: dict, setup: dict) -> None:
    """Tune trainable of one trial: a TorchTrainer over the trial's config, reporting to Tune every epoch.

    ``config``: the sampled ``{dotted key: value}``. ``setup``: cfg (dict), data_dirs, storage, share (the
    cluster share for ``plan_workers``), tracking_uri, experiment_id, parent_run_id. Opens the trial's MLflow
    child run (rank 0 of the workers logs params and per-epoch metrics into it); an exception marks the run
    FAILED with the error and is raised again so that Tune records the trial as failed.
    """
    import mlflow
    import ray.tune
    from mlflow.entities import Param
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    values = {k: _plain(v) for k, v in config.items()}
    client = mlflow.MlflowClient(setup["tracking_uri"])
    tags = {"mlflow.parentRunId": setup["parent_run_id"], "stage": "tune", "trial_id": trial_id}
    run_id = client.create_run(setup["experiment_id"], run_name=f"trial-{trial_id}", tags=tags).info.run_id
    try:
        try:
            cfg = trial_config(setup["cfg"], values, setup["epochs"], src=f"tune trial {trial_id}")
        except ConfigError:
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
            raise
        # the same str() of the same validated values that the worker logs: no conflicting params later
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in current_values(cfg, list(values)).items()])
        client.set_tag(run_id, "model", cfg.model.name)
        placement = plan_workers(cfg, setup["share"])
        for note in placement.notes:
            log.warning("trial %s: %s", trial_id, note)
        loop_config = {"cfg": cfg.to_dict(), "run_id": run_id, "tracking_uri": setup["tracking_uri"],
                       "status_dir": None}
        trainer = build_trainer(cfg, setup["data_dirs"], placement, f"train-{trial_id}", setup["storage"],
                                loop_config, callbacks=[TuneReportCallback()])
        trainer.fit()
    except Exception as e:
        _record_failure(client, run_id, e)
        raise
    client.set_tag(run_id, "tune.status", "ok")
    client.set_terminated(run_id, status="FINISHED")


def _asha_class():
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    class LastEpochASHA(AsyncHyperBandScheduler):
        """ASHA that never stops a trial at its last epoch (``max_t``): the stop would save nothing, and it
        kills the trial's driver while the run is being closed."""

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if result.get(self._time_attr, 0) >= self._max_t else action

    return LastEpochASHA


def make_scheduler(cfg: Config):
    """ASHA on the reported ``epoch``: rungs from ``tune.grace_period`` by ``tune.reduction_factor`` up to
    ``tune.epochs``; a trial below a rung's cutoff is stopped there, none at its last epoch."""
    return _asha_class()(time_attr="epoch", max_t=cfg.tune.epochs,
                         grace_period=min(cfg.tune.grace_period, cfg.tune.epochs),
                         reduction_factor=cfg.tune.reduction_factor, stop_last_trials=False)


# ----------------------------------------------------------------------------- results


TUNE_FIELDS = {"timestamp", "checkpoint_path", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
               "time_total_s", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore"}


def _finite(v: Any) -> float | None:
    v = _plain(v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _history(result) -> list[dict]:
    """The epochs a trial reported, as worker history rows ``{epoch, train_loss, val_iou, ...}``."""
    df = result.metrics_dataframe
    if df is None or "epoch" not in getattr(df, "columns", ()):
        return []
    cols = [c for c in df.columns if c not in TUNE_FIELDS and not c.startswith("config/")]
    rows = []
    for rec in df[cols].to_dict("records"):
        if _finite(rec.get("epoch")) is None:
            continue
        rows.append({k: (int(_plain(v)) if k == "epoch" else _plain(v)) for k, v in rec.items()
                     if k == "epoch" or _finite(v) is not None})
    return sorted(rows, key=lambda r: r["epoch"])


def collect_trials(grid, cfg: Config, keys: Sequence[str], child_runs: dict[str, Any]) -> list[dict]:
    """One record per trial of a ResultGrid: id, status (ok/stopped/failed), values, metric, epochs, error."""
    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    trials = []
    for result in grid:
        trial_id = str(result.path).rstrip("/").rsplit("/", 1)[-1]
        run = child_runs.get(trial_id)
        config = result.config or {}
        if not config and run is not None:  # failed before its first report: the driver logged the values
            config = {k: yaml.safe_load(run.data.params[k]) for k in keys if k in run.data.params}
        history = _history(result)
        scores = [s for s in (_finite(r.get(metric)) for r in history) if s is not None]
        epochs = max((r["epoch"] for r in history), default=0)
        if result.error is not None:
            status = "failed"
        else:
            status = "ok" if epochs >= cfg.tune.epochs else "stopped"
        error = ""
        if result.error is not None:
            error = (run.data.tags.get("error") if run is not None else "") or _error_text(result.error)[0]
        trials.append({
            "trial_id": trial_id, "status": status,
            "values": {k: _plain(config.get(k)) for k in keys},
            "final": scores[-1] if scores else None,
            "best": (min(scores) if mode == "min" else max(scores)) if scores else None,
            "epochs": epochs,
            "seconds": _finite((result.metrics or {}).get("time_total_s")),
            "run_id": run.info.run_id if run is not None else "",
            "error": error, "history": history, "result": result,
        })
    return sorted(trials, key=lambda t: t["trial_id"])


def pick_best(trials: list[dict], mode: str) -> dict | None:
    """The trial with the best epoch score (failed trials and trials without a score excluded)."""
    scored = [t for t in trials if t["status"] != "failed" and t["best"] is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda t: t["best"])


def _child_runs(client, exp_id: str, parent_id: str) -> dict[str, Any]:
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000)
    return {r.data.tags.get("trial_id", ""): r for r in runs}


def reconcile_child_runs(client, uri: str, exp_id: str, parent_id: str, trials: list[dict]) -> None:
    """Make every trial's MLflow child run complete: create it when the driver never ran, log epochs it lacks
    (a trial stopped by ASHA dies right after its last report), and close it with the trial's status."""
    from mlflow.entities import Param

    from dirl.train.worker import MlflowEpochLogger

    for t in trials:
        if not t["run_id"]:
            tags = {"mlflow.parentRunId": parent_id, "stage": "tune", "trial_id": t["trial_id"]}
            t["run_id"] = client.create_run(exp_id, run_name=f"trial-{t['trial_id']}", tags=tags).info.run_id
            params = [Param(k, str(v)) for k, v in t["values"].items() if v is not None]
            if params:
                client.log_batch(t["run_id"], params=params)
        run_id = t["run_id"]
        if t["history"]:
            MlflowEpochLogger(uri, run_id).sync(t["history"])
        run = client.get_run(run_id)
        client.set_tag(run_id, "tune.status", t["status"])
        if t["status"] == "failed":
            if not run.data.tags.get("error"):
                client.set_tag(run_id, "error", t["error"] or "the trial failed (see the Ray Tune trial folder)")
            if run.info.status != "FAILED":
                client.set_terminated(run_id, status="FAILED")
        else:  # a driver stopped by ASHA may have seen its run abort: that is no failure
            for tag in ("error", "error_detail"):
                if tag in run.data.tags:
                    client.delete_tag(run_id, tag)
            if run.info.status != "FINISHED":
                client.set_terminated(run_id, status="FINISHED")


# ----------------------------------------------------------------------------- outputs


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train_values(cfg: Config, best: dict[str, Any]) -> dict[str, Any]:
    """Every tuned key with the value the train stage will use: ``best`` (searched), else params.yaml or default."""
    return {**current_values(resolve_tuned(cfg, None)[0], list(TUNED_DEFAULTS)), **best}


def write_best_yaml(path: Path, values: dict[str, Any], info: dict) -> Path:
    """``{train: {..}, tune: info}`` with a header; the train stage reads the values of the searched keys."""
    body = {**nest(values), "tune": info}
    head = ("# Written by the tune stage (dirl tune): every tuned key with the value the train stage uses. A key\n"
            "# that params.yaml leaves null takes the value here when tune searched it (tune.searched), else its\n"
            "# default; a number in params.yaml wins. dvc.yaml declares these keys as params of train.\n")
    _write_text(path, head + yaml.safe_dump(body, sort_keys=False))
    return path


def write_trials_csv(path: Path, trials: list[dict], keys: Sequence[str], metric: str) -> Path:
    """One row per trial: id, status, searched values, final and best metric, epochs, seconds, run id, error."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + list(keys) + [metric, f"best_{metric}", "epochs", "seconds", "mlflow_run_id",
                                             "error"])
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))  # noqa: E731
    for t in trials:  # searched values at full precision (they are what a rerun would use), metrics rounded
        w.writerow([t["trial_id"], t["status"]] + ["" if t["values"].get(k) is None else str(t["values"][k])
                                                   for k in keys]
                   + [fmt(t["final"]), fmt(t["best"]), t["epochs"], fmt(t["seconds"]), t["run_id"], t["error"]])
    _write_text(path, buf.getvalue())
    return path


def _skipped(cfg: Config, out: Path, keys: Sequence[str], t0: float, reason: str = "tune.enabled is false") -> dict:
    """No search (``tune.enabled: false``, or every key set in params.yaml): best.yaml = the explicit values and
    defaults, nothing searched; a summary saying why."""
    values = train_values(cfg, {})
    write_best_yaml(out / "best.yaml", values, {"skipped": True, "reason": reason, "searched": []})
    write_trials_csv(out / "trials.csv", [], keys, cfg.tune.metric)
    save_resolved(cfg, out)
    summary = {"skipped": True, "reason": reason, "metric": cfg.tune.metric,
               "mode": metric_mode(cfg.tune.metric), "best_value": None, "best_trial": None, "trials": 0,
               "trials_ok": 0, "trials_stopped": 0, "trials_failed": 0,
               "seconds": round(time.perf_counter() - t0, 2), "best": values}
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return {**summary, "out_dir": str(out)}


# ----------------------------------------------------------------------------- the stage


def tune(cfg: Config, out_dir: str | os.PathLike = "results/tune", data_dirs: Sequence[str | os.PathLike] | None = None,
         root: str | os.PathLike | None = None) -> dict:
    """Search ``tune.search_space`` with Ray Tune + ASHA; write best.yaml, summary.json, trials.csv, config.yaml.

    ``data_dirs``: shard folders (default ``data/shards`` and ``data/synth`` of the workspace); ``root``: the
    workspace (default: the nearest parent with params.yaml). Returns the summary (as in ``summary.json``) plus
    ``trials_detail`` (one dict per trial: trial_id, status, values, final, best, epochs, seconds, run_id, error)
    and ``out_dir``. Raises RuntimeError when every trial failed (after writing
    summary.json and trials.csv).
    """
    t0 = time.perf_counter()
    root = Path(root).resolve() if root else workspace_root()
    out = Path(out_dir)
    parsed, notes = plan_search(cfg)
    for note in notes:
        print(f"tune: {note}", file=sys.stderr, flush=True)
    keys = list(parsed)
    if not cfg.tune.enabled:
        return _skipped(cfg, out, keys, t0)
    if not parsed:
        return _skipped(cfg, out, keys, t0, "every key of tune.search_space is set in params.yaml")

    import mlflow
    import ray
    from ray import tune as rtune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    dirs = [Path(d).resolve() for d in data_dirs] if data_dirs else default_data_dirs(root)
    check_shards(dirs)  # a bad shard fails here, in a line, not in every trial's workers
    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    storage = storage_path(cfg, root)
    name = f"tune-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    started = init_ray(cfg)
    try:
        plan = plan_trials(cfg, ray.cluster_resources())
        for note in plan.notes:
            log.warning(note)
        exp_id = tracking.setup(cfg, root)
        uri = tracking_uri(cfg, root)
        client = mlflow.MlflowClient(uri)
        tags = {"stage": "tune", "ray_run_name": name, "model": cfg.model.name,
                **tracking.provenance_tags(root, dirs)}
        parent_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        try:
            tracking.log_params_flat({"tune": dataclasses.asdict(cfg.tune), "model": dataclasses.asdict(cfg.model),
                                      "train": dataclasses.asdict(cfg.train)}, run_id=parent_id, client=client)
            setup = {"cfg": cfg.to_dict(), "data_dirs": [str(d) for d in dirs], "epochs": cfg.tune.epochs,
                     "storage": f"{storage.rstrip('/')}/{name}", "share": plan.share, "tracking_uri": uri,
                     "experiment_id": exp_id, "parent_run_id": parent_id}
            trainable = rtune.with_resources(rtune.with_parameters(run_trial, setup=setup), {"cpu": DRIVER_CPU})
            tuner = rtune.Tuner(
                trainable,
                param_space=param_space(parsed),
                tune_config=rtune.TuneConfig(
                    metric=metric, mode=mode, num_samples=cfg.tune.num_samples,
                    scheduler=make_scheduler(cfg),
                    # the concurrency limit goes here: with a search_alg, Tune ignores max_concurrent_trials
                    # (2 trials at once deadlock on 2 CPUs); the seed makes the sampled values reproducible
                    search_alg=BasicVariantGenerator(max_concurrent=plan.max_concurrent,
                                                     random_state=cfg.train.seed),
                    trial_name_creator=lambda trial: trial.trial_id,
                    trial_dirname_creator=lambda trial: trial.trial_id),
                run_config=rtune.RunConfig(name=name, storage_path=storage, verbose=1,
                                           failure_config=rtune.FailureConfig(max_failures=0)),
            )
            t_fit = time.perf_counter()
            grid = tuner.fit()
            fit_s = time.perf_counter() - t_fit
            trials = collect_trials(grid, cfg, keys, _child_runs(client, exp_id, parent_id))
            reconcile_child_runs(client, uri, exp_id, parent_id, trials)
            summary = _write_outputs(cfg, out, trials, keys, client, parent_id, name, storage, plan, t0, fit_s)
        except BaseException:
            client.set_terminated(parent_id, status="FAILED")
            raise
        if summary["best_trial"] is None:
            client.set_terminated(parent_id, status="FAILED")
            errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])[:2000]
            raise RuntimeError(f"no tune trial produced a {metric} ({len(trials)} trials; see {out / 'trials.csv'}"
                               f" and {Path(storage) / name}): {errors}")
        client.set_terminated(parent_id, status="FINISHED")
        return summary
    finally:
        if started:
            ray.shutdown()


def _write_outputs(cfg: Config, out: Path, trials: list[dict], keys: list[str], client, parent_id: str, name: str,
                   storage: str, plan: TrialPlan, t0: float, fit_s: float) -> dict:
    """best.yaml (when a trial scored), trials.csv, summary.json, config.yaml; the best into the parent run."""
    from mlflow.entities import Metric, Param

    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    best = pick_best(trials, mode)
    counts = {s: sum(t["status"] == s for t in trials) for s in ("ok", "stopped", "failed")}
    best_values = {}
    if best is not None:  # the values as the trial's validated config holds them (types coerced)
        best_values = current_values(trial_config(cfg, best["values"], cfg.tune.epochs), keys)
        write_best_yaml(out / "best.yaml", train_values(cfg, best_values),
                        {"metric": metric, "mode": mode, "value": best["best"], "trial_id": best["trial_id"],
                         "mlflow_run_id": best["run_id"], "parent_run_id": parent_id, "skipped": False,
                         "searched": list(keys)})
    write_trials_csv(out / "trials.csv", trials, keys, metric)
    save_resolved(cfg, out)
    summary = {
        "skipped": False, "metric": metric, "mode": mode,
        "best_value": best["best"] if best else None, "best_trial": best["trial_id"] if best else None,
        "trials": len(trials), "trials_ok": counts["ok"], "trials_stopped": counts["stopped"],
        "trials_failed": counts["failed"], "max_concurrent": plan.max_concurrent,
        "seconds": round(time.perf_counter() - t0, 2), "fit_s": round(fit_s, 2),
        "best": best_values, "parent_run_id": parent_id, "ray_run_name": name,
        "experiment_path": f"{storage.rstrip('/')}/{name}",
    }
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    ts = int(time.time() * 1000)
    metrics = [Metric(f"trials_{s}", float(n), ts, 0) for s, n in counts.items()]
    if best is not None:
        metrics.append(Metric(f"best_{metric}", float(best["best"]), ts, 0))
        client.log_batch(parent_id, metrics=metrics,
                         params=[Param(f"best.{k}", str(v)) for k, v in best_values.items()])
        client.set_tag(parent_id, "best_trial", best["trial_id"])
        client.set_tag(parent_id, "best_run_id", best["run_id"])
    else:
        client.log_batch(parent_id, metrics=metrics)
    for f in ("best.yaml", "trials.csv", "summary.json", "config.yaml"):
        if (out / f).is_file():
            client.log_artifact(parent_id, str(out / f))
    public = [{k: v for k, v in t.items() if k not in ("history", "result")} for t in trials]
    return {**summary, "trials_detail": public, "out_dir": str(out)}
