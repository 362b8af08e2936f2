"""``dvc.yaml`` must not drift from the stage modules (``pipeline/dvcyaml.py``, the contract in ``dirl/stages``).

* cmd: each stage runs ``python -m dirl.stages.<name>``.
* params: exactly the module's ``PARAMS``; the stage receives a config in which nothing else can be read
  (``dirl.config.restrict``), so a key it reads is a key dvc.yaml lists, or the stage fails naming it.
* code deps: every project file the stage's process loads (a fresh interpreter's modules after importing the stage
  module, plus what imports inside functions name); else DVC would not re-run the stage when that file changes.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest
import yaml

from dirl.config import ConfigError, load_config, restrict
from dirl.stages import STAGES
from helpers.paths import PARAMS, ROOT


def _tool():
    name = "dirl_pipeline_dvcyaml"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "pipeline" / "dvcyaml.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tool = _tool()


def test_dvc_yaml_matches_the_stage_modules():
    found = tool.problems(ROOT)
    assert not found, "dvc.yaml drifted from dirl/stages (fix: `python pipeline/dvcyaml.py --write`):\n" + "\n".join(
        found
    )


def test_every_stage_has_a_module_and_the_same_order():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(dvc) == STAGES


def test_check_fails_on_a_drifted_dvc_yaml_and_write_repairs_it(tmp_path):
    """The check can fail: a dvc.yaml missing a loaded file, a declared param and with a stale param and an old
    cmd is reported line by line; the rewrite repairs it and keeps the comments and the data deps."""
    bad = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", bad)
    doc = yaml.safe_load(bad.read_text())
    train = doc["stages"]["train"]
    train["deps"].remove("dirl/train/worker.py")
    train["params"].remove("model")
    doc["stages"]["evaluate"]["params"].append("tune.epochs")
    doc["stages"]["ingest"]["cmd"] = "python pipeline/stages.py ingest"
    bad.write_text("# a comment that must survive\n" + yaml.safe_dump(doc, sort_keys=False))
    found = tool.problems(ROOT, bad)
    assert any(
        "stage train: deps lacks dirl/train/worker.py: add the line `      - dirl/train/worker.py`" == f for f in found
    ), found
    assert any(f.startswith("stage train: params lacks model") for f in found)
    assert any(f.startswith("stage evaluate: params names tune.epochs") for f in found)
    assert any(f.startswith("stage ingest: cmd is") for f in found)
    assert len(found) == 4, found
    tool.write(ROOT, bad)
    assert tool.problems(ROOT, bad) == []
    text = bad.read_text()
    assert text.startswith("# a comment that must survive") and "- data/shards" in text


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_cannot_read_what_it_does_not_declare(stage):
    module = importlib.import_module(f"dirl.stages.{stage}")
    cfg = restrict(load_config(PARAMS), module.PARAMS, stage)
    undeclared = next(s for s in ("tune", "synth", "register", "data") if s not in module.PARAMS)
    with pytest.raises(ConfigError, match=f"stage {stage} reads {undeclared}.*dirl/stages/{stage}.py"):
        getattr(getattr(cfg, undeclared), "seed", None) or bool(getattr(cfg, undeclared))
    assert cfg.cluster.num_workers >= 1 and cfg.mlflow.experiment  # machine sections: always readable
    again = load_config(PARAMS)  # what a Ray worker rebuilds from cfg.to_dict() is restricted alike
    from dirl.config import config_from_dict

    rebuilt = config_from_dict(restrict(again, module.PARAMS, stage).to_dict())
    with pytest.raises(ConfigError, match=f"stage {stage} reads"):
        bool(getattr(rebuilt, undeclared))


def test_stage_module_runs_as_a_script():
    out = subprocess.run(
        [sys.executable, "-m", "dirl.stages.train", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "python -m dirl.stages.train" in out and "--set" in out
