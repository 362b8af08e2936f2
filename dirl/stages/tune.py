"""The tune stage: Ray Tune (ASHA) over short Ray Train runs, one MLflow child run per trial.

    python -m dirl.stages.tune             # what dvc.yaml runs; `dirl tune` calls the same run()
    from dirl.stages import tune
    out = tune.run(load_config("params.yaml"), out_dir="results/tune")
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
wins, so it is not searched (:func:`dirl.train.search.plan_search` prints a note), and when no key is left to
search the stage behaves as with ``tune.enabled: false``. To make another key searchable, add it to ``TUNED_DEFAULTS``.
:func:`check` (``dirl.train.search_space.check_search_space``) refuses a bad search space before any work, in one
line naming the params file and the dotted key; ``dirl config`` runs the same check.

How a search runs (the Ray Train V2 pattern: a TorchTrainer cannot be handed to a Tuner):

1. the Tuner's trainable is :func:`dirl.train.search.run_trial`, a driver that holds 0.01 CPU; it builds the
   trial's config (params.yaml + the sampled values), opens the trial's MLflow child run, and calls
   ``TorchTrainer.fit()`` with ``TuneReportCallback`` so that every epoch's metrics reach Tune (and its ASHA scheduler);
2. trials run ``cluster.max_concurrent_trials`` at a time (:func:`dirl.cluster.plan_trials`): 1 on a cluster with
   fewer than 4 CPUs, else as many as fit next to each other; each trial's worker group is sized by
   ``plan_workers`` within its share of ``ray.cluster_resources()``, so a trial can always be placed (an
   unplaceable group retries forever);
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
reads them with :func:`dirl.train.best_yaml.resolve_tuned`. With ``tune.enabled: false`` (or nothing left to
search) no trial runs and ``best.yaml`` holds the explicit values and defaults (``searched: []``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ray import tune as rtune
from ray.tune.search.basic_variant import BasicVariantGenerator

from dirl import tracking, workspace
from dirl.cluster import DRIVER_CPU, drop_trial_checkpoints, plan_trials, ray_session, storage_path
from dirl.config import Config
from dirl.data.loader import ShardDataset
from dirl.data.shards import check_shards
from dirl.progress import verbose
from dirl.stages.contract import main
from dirl.train.best_yaml import with_backbone_resolved
from dirl.train.outputs import write_tune_outputs, write_tune_skipped
from dirl.train.search import (
    collect_trials,
    make_scheduler,
    metric_mode,
    param_space,
    plan_search,
    run_trial,
    trial_lines,
)
from dirl.train.search_space import check_search_space

log = logging.getLogger("dirl.tune")


def split_sizes(dirs: Sequence[str | os.PathLike], cfg: Config) -> dict[str, int]:
    """The training and validation composites the trials read (``train``, ``val``): their steps and the
    validation set behind the noise of a trial's score."""

    return {
        split: len(ShardDataset([str(d) for d in dirs], split, cfg.model.input_size, train=False))
        for split in ("train", "val")
    }


PARAMS = ("model", "train", "tune")


def check(cfg: Config, src: str = "") -> None:
    """The stage's own check of its params, run on the loaded config before any work (``python -m dirl.stages.tune``
    and ``dirl tune`` alike, see :func:`dirl.stages.contract.stage_config`): ``tune.search_space``, which the config
    checks only as a mapping. A ConfigError names ``src`` (the params file) and the dotted key."""
    check_search_space(cfg.tune.search_space, src)


def run(
    cfg: Config,
    out_dir: str | os.PathLike = workspace.RESULTS / "tune",
    data_dirs: Sequence[str | os.PathLike] | None = None,
    root: str | os.PathLike | None = None,
) -> dict:
    """Search ``tune.search_space`` with Ray Tune + ASHA; write best.yaml, summary.json, trials.csv, config.yaml.

    ``data_dirs``: shard folders (default ``data/shards`` and ``data/synth`` of the workspace); ``root``: the
    workspace (default: the nearest parent with params.yaml). Returns the summary (as in ``summary.json``) plus
    ``trials_detail`` (one dict per trial: trial_id, status, values, final, best, epochs, seconds, run_id, error)
    and ``out_dir``. Raises RuntimeError when every trial failed (after writing summary.json and trials.csv).
    """
    t0 = time.perf_counter()
    root = workspace.root(root)
    out = Path(out_dir)
    parsed, notes = plan_search(cfg)
    for note in notes:
        print(f"tune: {note}", file=sys.stderr, flush=True)
    keys = list(parsed)
    if not cfg.tune.enabled:
        return write_tune_skipped(cfg, out, keys, t0)
    if not parsed:
        return write_tune_skipped(cfg, out, keys, t0, "every key of tune.search_space is set in params.yaml")

    dirs = [Path(d).resolve() for d in data_dirs] if data_dirs else workspace.shard_dirs(root)
    check_shards(dirs)  # a bad shard fails here, in a line, not in every trial's workers
    cfg = with_backbone_resolved(cfg, root)  # every trial's workers read the same absolute file
    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    storage = storage_path(cfg, root)
    name = f"tune-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    with ray_session(cfg) as resources:
        plan = plan_trials(cfg, resources)
        for note in plan.notes:
            log.warning(note)
        tags = {"stage": "tune", "ray_run_name": name, "model": cfg.model.name, **tracking.provenance_tags(root, dirs)}
        title = f"tune {cfg.model.name} {cfg.model.input_size}px · {cfg.tune.num_samples} trials · {name[-4:]}"
        parent = tracking.open_run(cfg, title, tags, root=root)
        client = parent.client
        with tracking.finishing(parent):
            tracking.log_datasets(client, parent.run_id, dirs, {"train": "training", "val": "validation"})
            tracking.log_params_flat(
                {
                    "tune": dataclasses.asdict(cfg.tune),
                    "model": dataclasses.asdict(cfg.model),
                    "train": dataclasses.asdict(cfg.train),
                },
                run_id=parent.run_id,
                client=client,
            )
            sizes = split_sizes(dirs, cfg)
            setup = {
                "cfg": cfg.to_dict(),
                "data_dirs": [str(d) for d in dirs],
                "epochs": cfg.tune.epochs,
                "steps_per_epoch": sizes["train"] // max(1, cfg.train.batch_size) or None,
                "source_tags": tracking.source_tags(root),  # the trial runs' "Source", user and git commit
                "storage": f"{storage.rstrip('/')}/{name}",
                "share": plan.share,
                "tracking_uri": parent.uri,
                "experiment_id": parent.experiment_id,
                "parent_run_id": parent.run_id,
            }
            trainable = rtune.with_resources(rtune.with_parameters(run_trial, setup=setup), {"cpu": DRIVER_CPU})
            tuner = rtune.Tuner(
                trainable,
                param_space=param_space(parsed),
                tune_config=rtune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    num_samples=cfg.tune.num_samples,
                    scheduler=make_scheduler(cfg),
                    # the concurrency limit goes here: with a search_alg, Tune ignores max_concurrent_trials
                    # (2 trials at once deadlock on 2 CPUs); the seed makes the sampled values reproducible
                    search_alg=BasicVariantGenerator(max_concurrent=plan.max_concurrent, random_state=cfg.train.seed),
                    trial_name_creator=lambda trial: trial.trial_id,
                    trial_dirname_creator=lambda trial: trial.trial_id,
                ),
                # one line per finished trial; Tune's own tables only with -v (DIRL_VERBOSE)
                run_config=rtune.RunConfig(
                    name=name,
                    storage_path=storage,
                    verbose=2 if verbose() else 0,
                    callbacks=[trial_lines(cfg, keys)],
                    failure_config=rtune.FailureConfig(max_failures=0),
                ),
            )
            t_fit = time.perf_counter()
            grid = tuner.fit()
            fit_s = time.perf_counter() - t_fit
            trials = collect_trials(grid, cfg, keys, tracking.child_runs(client, parent.experiment_id, parent.run_id))
            tracking.reconcile_child_runs(client, parent.uri, parent.experiment_id, parent.run_id, trials)
            summary = write_tune_outputs(
                cfg,
                out,
                trials,
                keys,
                client,
                parent.run_id,
                name,
                storage,
                plan.max_concurrent,
                t0,
                fit_s,
                n_val=sizes["val"] or None,
            )
            freed = drop_trial_checkpoints(storage, name)  # the trials' checkpoints served only the search
            if freed:
                print(f"tune: removed the trials' checkpoints ({freed / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
            if summary["best_trial"] is None:
                errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])[:2000]
                raise RuntimeError(
                    f"no tune trial produced a {metric} ({len(trials)} trials; see "
                    f"{out / 'trials.csv'} and {Path(storage) / name}): {errors}"
                )
        return summary


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "tune", check=check))
