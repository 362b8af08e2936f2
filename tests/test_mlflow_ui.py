"""The MLflow UI as a reader sees it, in headless Chromium (from the OS packages) against a real `mlflow ui` on
loopback: the runs view the project links to shows the test IoU column, the train run's charts start with the
train and val sections, the registered model leads to its logged model with the test dataset and the figures."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.lifecycle import make_cfg, make_logged_training, make_workspace

pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.usefixtures("one_torch_thread")]
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(dom: str) -> str:
    """The page's visible words, one space between them."""
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def browse(url: str, shot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot in ``shot``)."""
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=2000,1100",
        "--virtual-time-budget=20000",
    ]
    if shot is not None:
        subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    return subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium in PATH (apt-get install -y chromium)")
    from dirl.stages import evaluate as evaluate_stage
    from dirl.stages import register as register_stage

    ws = tmp_path_factory.mktemp("ui")
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        dirs = [str(d) for d in make_workspace(ws)]
        cfg = make_cfg(ws, **{"mlflow.experiment": "dirl"})
        run = make_logged_training(cfg, ws / "results" / "train", epochs=4)
        evaluate_stage.run(cfg, "results/train/model.pt", "results/evaluate")
        reg = register_stage.run(
            cfg,
            out_dir=ws / "results" / "register",
            weights=ws / "results/train/model.pt",
            run_json=ws / "results/train/run.json",
            metrics_path=ws / "results/evaluate/scores.json",
            shard_dirs=dirs,
        )
    finally:
        os.chdir(cwd)
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "ui",
            "--backend-store-uri",
            run["tracking_uri"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield {"base": base, "run": run, "reg": reg, "ws": ws, "shots": ws / "shots"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_runs_view_shows_the_test_iou_column(ui):
    from dirl.tracking import runs_url

    ui["shots"].mkdir(exist_ok=True)
    dom = browse(runs_url(ui["base"], ui["run"]["experiment_id"]), ui["shots"] / "runs.png")
    assert "Model training" in dom and "test/IoU" in dom and "test/prior_IoU" in dom, dom[-2000:]
    assert "evaluate train" in dom  # the evaluation run is a row of its own


def test_train_run_charts_put_train_and_val_first(ui):
    run = ui["run"]
    url = f"{ui['base']}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/model-metrics"
    text = _text(browse(url, ui["shots"] / "train.png"))
    # the chart sections, by metric prefix: train (loss, lr), then val (AP, F1, IoU, loss), the rest after them
    sections = re.findall(r"(\w+) \((\d+)\) Add chart", text)
    assert [name for name, _ in sections][:2] == ["train", "val"], text[:3000]
    assert dict(sections)["val"] == "4"


def test_registered_model_leads_to_its_dataset_and_figures(ui):
    run, reg = ui["run"], ui["reg"]
    version = browse(f"{ui['base']}/#/models/{reg['name']}/versions/{reg['version']}", ui["shots"] / "version.png")
    assert "evaluation_run_id" in version and "centre prior" in version  # tags and description
    model = browse(
        f"{ui['base']}/#/experiments/{run['experiment_id']}/models/{run['model_id']}", ui["shots"] / "model.png"
    )
    assert "test/IoU" in model and "test (#" in model and "evaluate train" in model, model[-2000:]
    files = browse(
        f"{ui['base']}/#/experiments/{run['experiment_id']}/models/{run['model_id']}/artifacts",
        ui["shots"] / "model_artifacts.png",
    )
    assert "evaluation" in files, files[-2000:]
