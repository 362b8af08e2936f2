"""A Ray Tune search: the space, one trial, the ASHA scheduler and the harvest of a ResultGrid.

    parsed, notes = plan_search(cfg)          # the keys of tune.search_space left null in params.yaml
    param_space(parsed)                       # -> Ray Tune samplers
    run_trial(config, setup)                  # the trainable: a TorchTrainer on the trial's config
    make_scheduler(cfg)                       # ASHA on the epoch, never stopping a trial at its last epoch
    trials = collect_trials(grid, cfg, keys, child_runs)   # one record per trial; pick_best(trials, mode)

The trial driver (Ray Train V2 pattern: a TorchTrainer cannot be handed to a Tuner) holds ``DRIVER_CPU``, opens
the trial's MLflow child run and calls ``fit()`` with ``TuneReportCallback`` so that every epoch reaches ASHA.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import yaml

from dirl import tracking
from dirl.cluster import plan_workers
from dirl.config import Config, ConfigError, config_from_dict
from dirl.train.best_yaml import current_values, resolve_tuned
from dirl.train.search_space import check_search_space
from dirl.train.worker import build_trainer

log = logging.getLogger("dirl.tune")


def metric_mode(metric: str) -> str:
    """``"min"`` for a loss, ``"max"`` for a score."""
    return "min" if metric.endswith("loss") else "max"


def plan_search(cfg: Config) -> tuple[dict[str, tuple[str, list]], list[str]]:
    """The part of ``tune.search_space`` to search, and notes: ``(parsed space, notes)``.

    A key is searched only where ``cfg`` leaves it null ("use the tune stage's value"); a key set to a number
    (params.yaml, ``dvc exp run -S``) is used as set by the train stage, so it is not searched and a note says
    so. Raises :class:`ConfigError` for a bad search space (:func:`check_search_space`: a key that is not a tuned
    key, ``TUNED_DEFAULTS``, a malformed entry, a value its key does not take).
    """
    parsed = check_search_space(cfg.tune.search_space)
    search: dict[str, tuple[str, list]] = {}
    notes: list[str] = []
    for key, spec in parsed.items():
        value = current_values(cfg, [key])[key]
        if value is None:
            search[key] = spec
        else:
            notes.append(
                f"{key} = {value!r} is set in params.yaml: not searched, the train stage uses it "
                f"(set it to null to tune it)"
            )
    return search, notes


def param_space(parsed: dict[str, tuple[str, list]]) -> dict:
    """Ray Tune samplers for a parsed search space, keyed by the canonical dotted key."""
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(*a),
        "choice": lambda a: tune.choice(a),
        "grid": tune.grid_search,
    }
    return {key: make[kind](args) for key, (kind, args) in parsed.items()}


def _plain(v: Any) -> Any:
    """numpy scalars (Tune's samplers) -> Python values, so configs validate and YAML stays plain."""
    return v.item() if hasattr(v, "item") and callable(v.item) else v


TRIAL_WARMUP_FRACTION = 0.25  # a trial warms up over at most this share of its steps


def trial_warmup(warmup_steps: int, epochs: int, steps_per_epoch: int | None) -> int:
    """The warm-up of a trial of ``epochs`` x ``steps_per_epoch`` optimizer steps: ``train.warmup_steps``, cut to
    a quarter of the trial (``TRIAL_WARMUP_FRACTION``) so that at least three quarters of every trial run at the
    lr it is testing (a trial that ends inside its warm-up compares ramps, not learning rates); unchanged when the
    trial's length is unknown."""
    if not steps_per_epoch or steps_per_epoch <= 0:
        return warmup_steps
    return min(warmup_steps, int(TRIAL_WARMUP_FRACTION * epochs * steps_per_epoch))


def trial_config(
    cfg: Config | dict, values: dict[str, Any], epochs: int, src: str = "tune trial", steps_per_epoch: int | None = None
) -> Config:
    """``cfg`` with the dotted ``values`` set, ``epochs`` epochs, validation every epoch, no best.yaml; a tuned
    key still null (not in the search space) takes its default (``TUNED_DEFAULTS``), as in the train stage. The
    warm-up is scaled to the trial's length (:func:`trial_warmup`): ``tune.max_steps_per_epoch`` steps per
    epoch, else ``steps_per_epoch`` (the training composites over the batch), when known."""
    data = cfg.to_dict() if isinstance(cfg, Config) else json.loads(json.dumps(cfg))
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = _plain(value)
    data["train"].update(epochs=epochs, val_every=1, use_tune_best=False)
    if data.get("tune", {}).get("max_steps_per_epoch"):
        data["train"]["max_steps_per_epoch"] = data["tune"]["max_steps_per_epoch"]
        steps_per_epoch = min(steps_per_epoch or math.inf, data["train"]["max_steps_per_epoch"])
    data["train"]["warmup_steps"] = trial_warmup(
        int(data["train"].get("warmup_steps") or 0),
        epochs,
        None if steps_per_epoch in (None, math.inf) else int(steps_per_epoch),
    )
    return resolve_tuned(config_from_dict(data, src), None)[0]


def margin_verdict(trials: list[dict], metric: str, n_val: int | None) -> dict:
    """How far the best trial is ahead of the next, and whether that exceeds the noise of the score.

    The noise is the standard error of a mean over ``n_val`` validation images at its largest: a per-image score
    in [0, 100] (IoU, AP; [0, 1] for F1) has a standard deviation of at most half its range, so a mean over
    ``n`` images is uncertain by up to ``range / (2 sqrt(n))``. A margin at or below it is "within noise": the
    search could not tell the two settings apart on this validation set. Unknown for a loss (no range) or
    without ``n_val``. Returns ``{margin, noise, beyond_noise, runner_up}`` (None where unknown)."""
    mode = metric_mode(metric)
    scored = sorted(
        (t for t in trials if t["status"] != "failed" and t["best"] is not None),
        key=lambda t: t["best"],
        reverse=(mode == "max"),
    )
    if len(scored) < 2:
        return {"margin": None, "noise": None, "beyond_noise": None, "runner_up": None}
    margin = abs(scored[0]["best"] - scored[1]["best"])
    span = {"val_iou": 100.0, "val_ap": 100.0, "val_f1": 1.0}.get(metric)
    noise = span / (2 * math.sqrt(n_val)) if span and n_val else None
    return {
        "margin": margin,
        "noise": noise,
        "beyond_noise": None if noise is None else margin > noise,
        "runner_up": scored[1]["trial_id"],
    }


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
    tags = {
        **setup.get("source_tags", {}),
        "mlflow.parentRunId": setup["parent_run_id"],
        "stage": "tune",
        "trial_id": trial_id,
    }
    title = tracking.trial_title(trial_id, values)
    run_id = client.create_run(setup["experiment_id"], run_name=title, tags=tags).info.run_id
    try:
        tracking.log_datasets(client, run_id, setup["data_dirs"], {"train": "training", "val": "validation"})
        try:
            cfg = trial_config(
                setup["cfg"],
                values,
                setup["epochs"],
                src=f"tune trial {trial_id}",
                steps_per_epoch=setup.get("steps_per_epoch"),
            )
        except ConfigError:
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
            raise
        # the same str() of the same validated values that the worker logs: no conflicting params later
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in current_values(cfg, list(values)).items()])
        client.set_tag(run_id, "model", cfg.model.name)
        placement = plan_workers(cfg, setup["share"])
        for note in placement.notes:
            log.warning("trial %s: %s", trial_id, note)
        loop_config = {
            "cfg": cfg.to_dict(),
            "run_id": run_id,
            "tracking_uri": setup["tracking_uri"],
            "status_dir": None,
        }
        trainer = build_trainer(
            cfg,
            setup["data_dirs"],
            placement,
            f"train-{trial_id}",
            setup["storage"],
            loop_config,
            callbacks=[TuneReportCallback()],
            trial=True,
        )
        trainer.fit()
    except Exception as e:
        client.set_tag(run_id, "tune.status", "failed")
        tracking.record_failure(client, run_id, e)
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
    return _asha_class()(
        time_attr="epoch",
        max_t=cfg.tune.epochs,
        grace_period=min(cfg.tune.grace_period, cfg.tune.epochs),
        reduction_factor=cfg.tune.reduction_factor,
        stop_last_trials=False,
    )


TUNE_FIELDS = {
    "timestamp",
    "checkpoint_path",
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
}


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
        rows.append(
            {
                k: (int(_plain(v)) if k == "epoch" else _plain(v))
                for k, v in rec.items()
                if k == "epoch" or _finite(v) is not None
            }
        )
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
            error = (run.data.tags.get("error") if run is not None else "") or tracking.error_text(result.error)[0]
        trials.append(
            {
                "trial_id": trial_id,
                "status": status,
                "values": {k: _plain(config.get(k)) for k in keys},
                "final": scores[-1] if scores else None,
                "best": (min(scores) if mode == "min" else max(scores)) if scores else None,
                "epochs": epochs,
                "seconds": _finite((result.metrics or {}).get("time_total_s")),
                "run_id": run.info.run_id if run is not None else "",
                "error": error,
                "history": history,
                "result": result,
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


def pick_best(trials: list[dict], mode: str) -> dict | None:
    """The trial with the best epoch score (failed trials and trials without a score excluded)."""
    scored = [t for t in trials if t["status"] != "failed" and t["best"] is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda t: t["best"])


def trial_lines(cfg: Config, keys: Sequence[str]):
    """A Ray Tune callback that prints one line per finished trial (status, values, best metric, epochs, time) on
    the driver's stderr, instead of Tune's status tables (``dirl tune -v`` brings those back)."""
    import sys
    import time

    from ray.tune import Callback

    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    total = cfg.tune.num_samples

    class TrialLines(Callback):
        def __init__(self):
            self.done = 0
            self.best: dict[str, float] = {}
            self.t0 = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            v = _finite(result.get(metric))
            if v is not None:
                old = self.best.get(trial.trial_id)
                self.best[trial.trial_id] = v if old is None else (min if mode == "min" else max)(old, v)

        def _line(self, trial, status: str) -> None:
            self.done += 1
            values = ", ".join(
                f"{k.split('.', 1)[1]}={_plain(trial.config.get(k)):.3g}"
                if isinstance(_plain(trial.config.get(k)), float)
                else f"{k}={trial.config.get(k)}"
                for k in keys
            )
            best = self.best.get(trial.trial_id)
            score = f"{metric} {best:.2f}" if best is not None else f"no {metric}"
            epochs = (trial.last_result or {}).get("epoch", 0)
            print(
                f"tune: trial {self.done}/{total} {trial.trial_id} {status:<7} {values}  {score}  "
                f"{epochs} epoch(s)  {time.monotonic() - self.t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            stopped = (trial.last_result or {}).get("epoch", 0) < cfg.tune.epochs
            self._line(trial, "stopped" if stopped else "ok")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed")

    return TrialLines()
