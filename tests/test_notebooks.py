"""The notebooks run headless (nbclient, the venv's ``python3`` kernel) on a workspace that a shrunk pipeline builds.

The workspace is made in a temporary folder from the repository's ``params.yaml`` with tiny settings (dirl_lite at
64 px, 1 epoch of 3 steps, no tuning) by calling the stages' functions in a subprocess, the way ``dvc repro`` runs
them. The walkthrough is executed at three points of the model lifecycle: after ``evaluate`` (nothing registered:
it loads ``results/train/model.pt``), after ``register`` (it loads ``@challenger``) and after ``promote`` (it loads
``@champion``). A probe cell appended to the executed copy reports the notebook's variables, which are checked
against the pipeline's own outputs (manifests, ``run.json``, ``model.json``, ``metrics.json``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra (nbformat, nbclient, ipykernel) is absent")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra (nbformat, nbclient, ipykernel) is absent")
from nbclient.exceptions import CellExecutionError  # noqa: E402

from helpers.paths import PARAMS, ROOT  # noqa: E402

NB_DIR = ROOT / "notebooks"
WALKTHROUGH = NB_DIR / "walkthrough.ipynb"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
IMAGE_CELLS = ("contact-sheet", "predict", "attention", "curves")

TINY = {
    "data.stored_size": 64,
    "cluster.data_workers": 1,
    "synth.per_image": 2,
    "model.name": "dirl_lite",
    "model.input_size": 64,
    "train.epochs": 1,
    "train.batch_size": 4,
    "train.max_steps_per_epoch": 3,
    "train.use_tune_best": False,
    "tune.enabled": False,
    "evaluate.batch_size": 8,
    "evaluate.grid_items": 3,
    "cluster.storage_path": "",
    "mlflow.tracking_uri": "",
}

# Runs in the workspace (cwd) as `python -c PIPELINE <step> ...`: the stage functions that dvc.yaml's stages call.
PIPELINE = """
import sys
from pathlib import Path

from dirl.config import load_config

cfg = load_config("params.yaml")
for step in sys.argv[1:]:
    if step == "data":
        from dirl.stages import ingest, preprocess, synthesize
        ingest.run(cfg)
        preprocess.run(cfg)
        synthesize.run(cfg)
    elif step == "train":
        from dirl.stages import train
        train.run(cfg, out_dir="results/train", root=Path.cwd())
    elif step == "evaluate":
        from dirl.stages import evaluate
        evaluate.run(cfg)
    elif step == "register":
        from dirl.stages import register
        register.run(cfg)
    elif step == "promote":
        from dirl.lifecycle.release import promote
        promote(cfg)
    else:
        sys.exit(f"unknown step {step!r}")
"""

PROBE = """
import json as _json, os as _os, sys as _sys
print("PROBE " + _json.dumps({
    "executable": _sys.executable, "cwd": _os.getcwd(), "ref": ref, "version": info.get("version"),
    "model": info["model"], "counts_total": int(counts.iloc[-1, -1]), "maps": len(outputs),
    "shown": len(idx), "runs": runs[["run_id", "test IoU"]].to_dict("records"),
    "registry": registry.to_dict("records"),
}, default=str))
"""


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would point MLflow or Ray elsewhere."""
    elsewhere = ("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "MLFLOW_RUN", "MLFLOW_EXPERIMENT", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(elsewhere)}
    env.update(
        {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TQDM_DISABLE": "1",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def make_workspace(ws: Path) -> Path:
    """``ws/params.yaml``: the repository's parameters with the TINY overrides."""
    from dirl.config import load_config, set_dotted

    params = yaml.safe_load(PARAMS.read_text())
    for key, value in TINY.items():
        set_dotted(params, key, value)
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_config(ws / "params.yaml")  # the overrides are valid
    return ws


def run_steps(ws: Path, *steps: str) -> float:
    """Run pipeline steps in ``ws`` in a fresh interpreter; returns the seconds taken."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PIPELINE, *steps], cwd=ws, env=clean_env(), capture_output=True, text=True, timeout=900
    )
    if proc.returncode:
        pytest.fail(f"pipeline steps {steps} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.perf_counter() - t0


def execute(path: Path, cwd: Path, probe: bool = False) -> tuple[nbformat.NotebookNode, dict | None, float]:
    """Execute a notebook with its kernel started in ``cwd``; returns (executed notebook, probe values, seconds)."""
    nb = nbformat.read(path, as_version=4)
    if probe:
        nb.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    t0 = time.perf_counter()
    client.execute(env=clean_env())  # raises CellExecutionError naming the failing cell
    seconds = time.perf_counter() - t0
    values = None
    if probe:
        text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        line = next(ln for ln in text.splitlines() if ln.startswith("PROBE "))
        values = json.loads(line[len("PROBE ") :])
    return nb, values, seconds


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def mime_types(cell: nbformat.NotebookNode) -> set[str]:
    return {m for o in cell.outputs for m in o.get("data", {})}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """The walkthrough executed after evaluate, after register and after promote of one shrunk pipeline."""
    ws = make_workspace(tmp_path_factory.mktemp("walkthrough") / "ws")
    timings, phases = {}, {}
    timings["data+train+evaluate"] = run_steps(ws, "data", "train", "evaluate")
    phases["evaluated"], timings["notebook (evaluated)"] = _probe_run(ws, ws / "data")  # started below the root
    timings["register"] = run_steps(ws, "register")
    phases["registered"], timings["notebook (registered)"] = _probe_run(ws, ws)
    timings["promote"] = run_steps(ws, "promote")
    phases["promoted"], timings["notebook (promoted)"] = _probe_run(ws, ws)
    print("\nwalkthrough timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return {"ws": ws, "phases": phases, "timings": timings}


def _probe_run(ws: Path, cwd: Path) -> tuple[tuple, float]:
    nb, values, seconds = execute(WALKTHROUGH, cwd, probe=True)
    return (nb, values), seconds


def _expected(ws: Path) -> dict:
    manifests = [json.loads((ws / d / "manifest.json").read_text()) for d in ("data/shards", "data/synth")]
    cfg = yaml.safe_load((ws / "params.yaml").read_text())
    return {
        "rows": sum(m["rows"] for m in manifests),
        "run_id": json.loads((ws / "results/train/run.json").read_text())["run_id"],
        "test_iou": json.loads((ws / "results/evaluate/scores.json").read_text())["test"]["model"]["IoU"],
        "name": cfg["register"]["model_name"],
        "alias": cfg["register"]["alias"],
    }


def _check_common(nb, values: dict, ws: Path) -> None:
    exp = _expected(ws)
    assert values["executable"] == sys.executable  # kernel "python3" is this interpreter (the venv's)
    assert Path(values["cwd"]) == ws.resolve()
    assert values["counts_total"] == exp["rows"]
    assert values["model"] == "dirl_lite" and values["maps"] == 6  # [final, A4, A3, A2, A1, A0]
    assert values["shown"] >= 1
    assert [r["run_id"] for r in values["runs"]] == [exp["run_id"]]  # no tuning: the one training run
    assert math.isclose(float(values["runs"][0]["test IoU"]), exp["test_iou"], rel_tol=1e-6)
    for tag in IMAGE_CELLS:
        assert "image/png" in mime_types(tagged(nb, tag)), f"cell {tag!r} shows no image"
    data = tagged(nb, "data").outputs[0]["data"]["text/html"]
    assert "synth" in data and "total" in data
    assert exp["run_id"] in tagged(nb, "runs").outputs[0]["data"]["text/html"]
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow  # the lifecycle fixture runs a shrunk pipeline and the notebook 3 times: ~2 min on 2 cores
def test_walkthrough_before_registration_loads_the_weights_file(lifecycle):
    ws = lifecycle["ws"]
    nb, values = lifecycle["phases"]["evaluated"]
    _check_common(nb, values, ws)
    assert values["ref"] == "results/train/model.pt" and values["version"] is None
    assert values["registry"] == []


@pytest.mark.slow  # the lifecycle fixture runs a shrunk pipeline and the notebook 3 times: ~2 min on 2 cores
def test_walkthrough_loads_the_challenger_after_register(lifecycle):
    ws = lifecycle["ws"]
    nb, values = lifecycle["phases"]["registered"]
    _check_common(nb, values, ws)
    exp, registered = _expected(ws), json.loads((ws / "results/register/model.json").read_text())
    assert values["ref"] == f"models:/{exp['name']}@{exp['alias']}"
    assert values["version"] == registered["version"]
    assert [(str(r["version"]), r["aliases"], r["run_id"]) for r in values["registry"]] == [
        (registered["version"], f"@{exp['alias']}", exp["run_id"])
    ]


@pytest.mark.slow  # the lifecycle fixture runs a shrunk pipeline and the notebook 3 times: ~2 min on 2 cores
def test_walkthrough_loads_the_champion_after_promote(lifecycle):
    ws = lifecycle["ws"]
    nb, values = lifecycle["phases"]["promoted"]
    _check_common(nb, values, ws)
    exp, registered = _expected(ws), json.loads((ws / "results/register/model.json").read_text())
    assert values["ref"] == f"models:/{exp['name']}@champion" and values["version"] == registered["version"]
    assert set(values["registry"][0]["aliases"].split()) == {"@champion", f"@{exp['alias']}"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_runs_headless(path, lifecycle):
    if path == WALKTHROUGH:
        nb = lifecycle["phases"]["promoted"][0]
    else:
        nb, _, _ = execute(path, lifecycle["ws"])
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), f"{path.name}: a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_walkthrough_on_an_empty_workspace_says_to_run_the_pipeline(tmp_path):
    ws = make_workspace(tmp_path / "empty")
    with pytest.raises(CellExecutionError, match="run `make run`"):
        execute(WALKTHROUGH, ws)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        f"{path.name} carries outputs: clear them (or rebuild it with notebooks/_build.py)"
    )


def test_walkthrough_matches_its_generator():
    spec = importlib.util.spec_from_file_location("walkthrough_build", NB_DIR / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert json.loads(nbformat.writes(build.build())) == json.loads(WALKTHROUGH.read_text()), (
        "notebooks/walkthrough.ipynb differs from notebooks/_build.py: run `python notebooks/_build.py`"
    )
