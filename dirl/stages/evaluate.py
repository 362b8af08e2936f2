"""evaluate: ``results/train/model.pt`` -> ``results/evaluate/`` (AP / F1 / IoU on the test split and the extra
sets, each beside the centred prior on the same images, with figures), recorded as an MLflow evaluation run of its
own linked to the logged model (:func:`dirl.lifecycle.evaluate.evaluate_stage`)."""

from __future__ import annotations

import sys

from dirl.config import Config
from dirl.lifecycle.evaluate import evaluate_stage
from dirl.stages.contract import main

PARAMS = ("evaluate", "model.input_size")


def run(cfg: Config, model_ref: str = "results/train/model.pt", out_dir: str = "results/evaluate", **options) -> dict:
    """Evaluate ``model_ref`` (weights path, run id or models:/ URI) into ``out_dir``; returns the metrics."""
    return evaluate_stage(cfg, model_ref=model_ref, out_dir=out_dir, **options)


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "evaluate"))
