"""End to end against real servers: `mlflow server` as the tracking store, register + promote through it,
then `mlflow models serve` of models:/<name>@champion answering a REST request with a map of the input's size."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers.lifecycle import composite, make_cfg, make_training_run, make_weights, make_workspace
from helpers.paths import PARAMS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict, request) -> subprocess.Popen:
    """Start a server in its own process group; the finalizer stops that group."""
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        out.close()

    request.addfinalizer(stop)
    return proc


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout} s:\n{log.read_text()[-4000:]}")


def mlflow_server(tmp_path: Path, env: dict, request) -> str:
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in tmp_path; returns its URI once healthy."""
    port = free_port()
    server = start(
        [
            MLFLOW,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        tmp_path / "server.log",
        env,
        request,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", server, tmp_path / "server.log", 120)
    return uri


def test_register_promote_and_serve_champion(tmp_path, monkeypatch, request):
    from dirl.lifecycle.predict import predict_maps
    from dirl.lifecycle.pyfunc import decode_maps, rest_payload
    from dirl.lifecycle.release import promote
    from dirl.stages import register as register_stage
    from dirl.weights import load_weights

    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",  # the scoring server runs `uvicorn` from PATH: the venv's bin must be on it
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    uri = mlflow_server(tmp_path, env, request)

    monkeypatch.chdir(tmp_path)
    dirs = [str(d) for d in make_workspace(tmp_path)]
    cfg = make_cfg(tmp_path, **{"mlflow.tracking_uri": uri})
    train = tmp_path / "results" / "train"
    train.mkdir(parents=True)
    make_training_run(cfg, train)
    (tmp_path / "results" / "evaluate").mkdir(parents=True)
    (tmp_path / "results" / "evaluate" / "scores.json").write_text(
        json.dumps(
            {
                "test": {
                    "model": {"n": 6, "AP": 1.0, "F1": 0.1, "IoU": 1.0},
                    "centre_prior": {"n": 6, "AP": 1.0, "F1": 0.1, "IoU": 1.0},
                }
            }
        )
    )
    flat, good = make_weights(tmp_path / "flat.pt", constant=True), make_weights(tmp_path / "good.pt")
    for weights, version in ((flat, "1"), (good, "2")):
        (train / "model.pt").unlink(missing_ok=True)
        os.link(weights, train / "model.pt")
        assert register_stage.run(cfg, shard_dirs=dirs)["version"] == version
        res = promote(cfg, shard_dirs=dirs)  # v1: no champion yet; v2: beats the flat v1 (tag lock on a server)
        assert res["champion"] == version
    client_aliases = __import__("mlflow").MlflowClient(uri).get_registered_model("dirl-test").aliases
    assert client_aliases == {"challenger": "2", "champion": "2", "previous": "1"}

    sport = free_port()
    serve = start(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            "models:/dirl-test@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(sport),
        ],
        tmp_path / "serve.log",
        {**env, "MLFLOW_TRACKING_URI": uri},
        request,
    )
    wait_http(f"http://127.0.0.1:{sport}/ping", serve, tmp_path / "serve.log", 180)

    img, _ = composite(7, 61, 90)  # any size: not square, not a multiple of 16
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    body = json.dumps(rest_payload([png.tobytes()])).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{sport}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read())
    (served,) = decode_maps(body)
    assert served.shape == (61, 90) and body["predictions"][0]["height"] == 61
    model, info = load_weights(good)
    assert np.abs(served - predict_maps(model, [img], info["input_size"])[0]).max() <= 0.5 / 255 + 1e-6


def test_training_logs_into_a_real_mlflow_server(tmp_path, request):
    """`train()` with `mlflow.tracking_uri` pointing at `mlflow server`: one run, each epoch once, weights logged."""
    from dirl.config import load_config
    from dirl.data.toy import toy_shards
    from dirl.stages.train import run as train

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    uri = mlflow_server(tmp_path, env, request)
    data = toy_shards(tmp_path / "toy", n_train=16, n_val=4, size=32)
    cfg = load_config(
        PARAMS,
        overrides={
            "model.name": "unet",
            "model.input_size": 32,
            "train.epochs": 2,
            "train.batch_size": 2,
            "train.max_steps_per_epoch": 2,
            "train.precision": "fp32",
            "train.channels_last": False,
            "cluster.storage_path": str(tmp_path / "ray_results"),
            "train.use_tune_best": False,
            "mlflow.tracking_uri": uri,
            "mlflow.experiment": "server-test",
            "cluster.num_cpus": 2,
        },
    )
    out = train(cfg, out_dir=tmp_path / "out", data_dirs=[data], root=tmp_path)
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "unet"
    steps = [m.step for m in client.get_metric_history(out["run_id"], "val/IoU")]
    assert steps == [1, 2]
    # the weights are stored once, as the run's logged model, which `dirl register` registers as it is
    logged = client.get_logged_model(out["model_id"])
    assert logged.source_run_id == out["run_id"] and "weights" not in {
        a.path for a in client.list_artifacts(out["run_id"])
    }
