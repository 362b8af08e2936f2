"""register: the model the train run logged -> a new version of ``register.model_name`` with alias
``register.alias`` (``@challenger``), tagged with the pipeline evaluation's test figures and the data and code
hashes; writes ``results/register/model.json``. Promotion to ``@champion`` is a deliberate step of its own
(:func:`dirl.lifecycle.release.promote`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import mlflow

from dirl.config import Config
from dirl.io import write_json_atomic
from dirl.lifecycle.release import (
    check_train_run,
    describe_version,
    model_to_register,
    pipeline_evaluation,
    read_scores,
    read_train_run,
    version_tags,
    weights_header,
)
from dirl.stages.contract import main
from dirl.tracking import setup, tracking_uri
from dirl.workspace import SHARD_DIRS

PARAMS = ("register",)


def run(
    cfg: Config,
    out_dir: str | os.PathLike = "results/register",
    weights: str | os.PathLike = "results/train/model.pt",
    run_json: str | os.PathLike = "results/train/run.json",
    metrics_path: str | os.PathLike = "results/evaluate/scores.json",
    shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS,
) -> dict:
    """Register the trained model; returns ``{name, version, alias, run_id, model_uri, ...}``.

    The model is the one the train run logged (``run_json``), or ``weights`` logged into that run now when it
    holds other weights. The version is tagged with the evaluation metrics (``metrics_path``: ``metric.test/IoU``
    ...), the git commit, the DVC and shard hashes and the weights' sha256. Writes ``<out_dir>/model.json``
    {name, version, alias, run_id, model_uri, logged_model_uri, tracking_uri} and returns it.
    """
    weights, run_json, metrics_path = Path(weights), Path(run_json), Path(metrics_path)
    header = weights_header(weights)  # WeightsError if corrupt
    run = read_train_run(run_json)
    metrics = read_scores(metrics_path)
    setup(cfg)  # tracking URI + reachability (TrackingError names a server that is down)
    uri = tracking_uri(cfg)
    client = mlflow.MlflowClient(uri)
    check_train_run(client, run, run_json, uri)
    name = cfg.register.model_name
    tags = version_tags(header, metrics, weights, shard_dirs, pipeline_evaluation(metrics_path))
    model_uri = model_to_register(client, run, weights)
    mv = mlflow.register_model(model_uri, name, tags=tags)  # evaluate linked its figures to this model already
    client.set_registered_model_alias(name, cfg.register.alias, mv.version)
    describe_version(client, name, mv.version, header, metrics)
    result = {
        "name": name,
        "version": str(mv.version),
        "alias": cfg.register.alias,
        "run_id": run["run_id"],
        "model_uri": f"models:/{name}/{mv.version}",
        "logged_model_uri": model_uri,
        "tracking_uri": uri,
    }
    write_json_atomic(Path(out_dir) / "model.json", result)
    return result


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "register"))
