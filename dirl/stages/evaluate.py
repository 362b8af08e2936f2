"""evaluate: ``results/train/model.pt`` -> ``results/evaluate/`` (AP / F1 / IoU on the test split and the extra
sets, each beside the centred prior on the same images, with figures), recorded as an MLflow evaluation run of its
own linked to the logged model (:func:`dirl.lifecycle.evaluate.log_evaluation`).

    from dirl.stages import evaluate
    metrics = evaluate.run(cfg, model_ref="results/train/model.pt", out_dir="results/evaluate")
    metrics["test"]["model"]["IoU"], metrics["test"]["centre_prior"]["IoU"]

Outputs in ``out_dir``:
    scores.json      {"<set>": {"model": {n, AP, F1, IoU, subsets}, "centre_prior": {...}}, ...}
    metrics.json     {"<set>": {n, AP, F1, IoU}} of the model      } what `dvc metrics show` lists: one row each,
    prior.json       {"<set>": {n, AP, F1, IoU}} of the prior      } in the same columns
    pr_curve.csv     threshold, precision, recall of the model on the test set (pixel level, 101 thresholds)
    pr_prior.csv     the same for the centred prior on the same images (the PR plot's baseline)
    pr_curves.csv    set, method, threshold, precision, recall for every set, model and centre prior
    per_image.csv    set, id, subset, ap, f1, iou, prior_ap, prior_f1, prior_iou (fractions in [0, 1])
    grid.png         rows = test items at quantiles of per-image model IoU (best .. worst); composite + ground
                     truth | model | centre prior, the set's scores of both in the title
    pr_curve.png     the two PR curves above as a picture (recall, precision; the prior in its own colour)
    mda.png          image | ground truth | A0..A4 | final (a note figure for models without attention maps)
    config.yaml      the resolved configuration
    info.json        the model reference, its header, the sets' sizes, notes and the MLflow runs (train, evaluation)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dirl.config import Config, save_resolved
from dirl.io import write_json_atomic
from dirl.lifecycle.evaluate import (
    eval_sets,
    evaluation_record,
    is_pipeline_output,
    log_evaluation,
    score_sets,
    train_run_of,
    write_figures,
    write_per_image,
    write_pr_curves,
    write_pr_picture,
    write_scores,
)
from dirl.lifecycle.resolve import load_model_ref
from dirl.speed import default_device
from dirl.stages.contract import main
from dirl.workspace import SHARD_DIRS

log = logging.getLogger("dirl.lifecycle.evaluate")  # the evaluation's logger, as its steps log

PARAMS = ("evaluate", "model.input_size")


def run(
    cfg: Config,
    model_ref: str = "results/train/model.pt",
    out_dir: str | os.PathLike = "results/evaluate",
    shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS,
    log_mlflow: bool = True,
    pipeline: bool | None = None,
) -> dict:
    """Evaluate ``model_ref`` (weights path, run id or models:/ URI) into ``out_dir``; returns the metrics.

    The test split and the extra sets are read from ``shard_dirs``. The evaluation is recorded as an MLflow run of
    its own (:func:`dirl.lifecycle.evaluate.log_evaluation`) unless ``log_mlflow`` is False or the model has no
    training run; ``pipeline`` (default: whether ``out_dir`` is the workspace's ``results/evaluate``) marks the
    pipeline's own evaluation of the model, whose metrics and figures are also logged against the logged model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets, notes = eval_sets(cfg, shard_dirs)
    model, info = load_model_ref(model_ref, cfg)
    model.to(default_device()).eval()
    size = int(info.get("input_size") or cfg.model.input_size)
    metrics, per_image, pr_rows = score_sets(model, sets, size, cfg.evaluate.batch_size)
    notes += [note for s in sets for note in s.notes]
    write_scores(out, metrics)
    test = sets[0].name
    write_pr_curves(out, pr_rows, test)
    write_per_image(out, per_image)
    notes += write_figures(
        model,
        info,
        sets[0],
        size,
        cfg.evaluate.grid_items,
        out,
        per_image=[r for r in per_image if r["set"] == test],
        scores=metrics[test],
    )
    write_pr_picture(out, [r for r in pr_rows if r["set"] == test], metrics[test], info, test)
    save_resolved(cfg, out)

    run_id, uri, model_id = train_run_of(model_ref, info, cfg) if log_mlflow else (None, None, None)
    if pipeline is None:  # the DVC stage's output folder: the pipeline's own evaluation of this model
        pipeline = is_pipeline_output(out)
    record = evaluation_record(info, size, sets, notes, run_id, model_id, uri, pipeline)

    def write_info(eval_id: str | None) -> None:
        record["mlflow"]["evaluation_run_id"] = eval_id
        write_json_atomic(out / "info.json", record)

    write_info(None)
    if run_id and uri:
        log_evaluation(
            run_id,
            uri,
            metrics,
            out,
            sets,
            cfg,
            model_id=model_id,
            model_ref=str(model_ref),
            pipeline=bool(pipeline),
            before_files=write_info,  # info.json names the evaluation run before it is logged
        )
    else:
        log.warning("no MLflow run for %s (no run.json beside it): results written to %s only", model_ref, out)
    return metrics


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "evaluate"))
