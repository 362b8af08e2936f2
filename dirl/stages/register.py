"""register: the model the train run logged -> a new version of ``register.model_name`` with alias
``register.alias`` (``@challenger``), tagged with the pipeline evaluation's test figures and the data and code
hashes (:func:`dirl.lifecycle.release.register_stage`); writes ``results/register/model.json``."""

from __future__ import annotations

import sys

from dirl.config import Config
from dirl.lifecycle.release import register_stage
from dirl.stages.contract import main

PARAMS = ("register",)


def run(cfg: Config, out_dir: str = "results/register", **options) -> dict:
    """Register the trained model; returns ``{name, version, alias, run_id, model_uri, ...}``."""
    return register_stage(cfg, out_dir=out_dir, **options)


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "register"))
