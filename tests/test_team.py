"""The team stack end to end, on loopback, with real processes: `pipeline/team.py up` starts PostgreSQL (OS
packages), moto's standalone S3 server and `mlflow server` (PostgreSQL backend store, artifacts proxied to
s3://<bucket>/mlartifacts); the smoke pipeline runs in a temporary git clone with the team profile (params/team.yaml)
applied, and then:

- the runs and the registered model are rows of PostgreSQL (queried with psycopg2, not through MLflow);
- MLflow's artifacts and Ray's checkpoints are objects in the bucket (listed with boto3 on the S3 endpoint);
- `dvc push` to the S3 remote, then a second clone with no local state `dvc pull`s, and `dirl predict --model
  models:/dirl@challenger` there writes the same masks as in the first clone;
- two processes promoting at once against the server store leave the aliases consistent (the tag lock of
  dirl/lifecycle/release.py), and the lock's critical sections never overlap;
- an archive in the bucket is fetched through the s3:// branch of the ingest downloader;
- a second `team.py up` changes nothing, and after a crash (mlflow's server and PostgreSQL's postmaster killed) `up`
  brings the stack back with the runs still there;
- `team.py down` leaves no process of the stack running and the ports closed; `down --purge` removes the state.

Only what a user of pipeline/team.py sees is checked: its output, `status --json`, `env --json`, the endpoints and the
processes on the machine; none of its files but the state dir itself. Marker `team` (excluded from `make test`;
`make test-team`). About 3-6 minutes on 2 cores.
"""

from __future__ import annotations

import glob
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import yaml

from dirl.config import write_profile
from helpers.paths import ROOT
from helpers.repo import BIN, base_env, copy_tree, ran, sh

pytestmark = pytest.mark.team

TEAM = [sys.executable, str(ROOT / "pipeline" / "team.py")]
STAGES = {"ingest", "preprocess", "synthesize", "tune", "train", "evaluate", "register"}
TIMES: dict[str, float] = {}

for mod in ("psycopg2", "boto3", "s3fs", "dvc_s3", "moto"):
    pytest.importorskip(mod, reason="the team extra is not installed: pip install -e '.[team]'")
if not (shutil.which("postgres") or glob.glob("/usr/lib/postgresql/*/bin/postgres")):
    pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)", allow_module_level=True)


# ----------------------------------------------------------------------------- helpers


def team(stack, *args: str, timeout: float = 400) -> str:
    return sh(*TEAM, "--state-dir", stack["state"], *args, cwd=ROOT, timeout=timeout)


def status(stack) -> dict:
    return json.loads(team(stack, "status", "--json", timeout=60))


def port(url: str) -> int:
    return urlsplit(url).port


def ports(stack) -> list[int]:
    e = stack["env"]
    return [port(e["DIRL_TEAM_BACKEND_STORE_URI"]), port(e["AWS_ENDPOINT_URL"]), port(e["MLFLOW_TRACKING_URI"])]


def listening(port: int) -> list[psutil.Process]:
    """The processes listening on 127.0.0.1:``port``."""
    conns = psutil.net_connections("tcp")
    return [psutil.Process(pid) for pid in {c.pid for c in conns if c.status == "LISTEN" and c.laddr.port == port}]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # a zombie waits for its parent: gone
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack on free ports, via pipeline/team.py; `down --purge` afterwards, whatever happened."""
    state = tmp_path_factory.mktemp("team") / "state"
    t0 = time.monotonic()
    try:
        out = sh(
            *TEAM,
            "--state-dir",
            state,
            "up",
            "--postgres-port",
            "0",
            "--s3-port",
            "0",
            "--mlflow-port",
            "0",
            cwd=ROOT,
            timeout=400,
        )
        TIMES["team up"] = time.monotonic() - t0
        env = json.loads(sh(*TEAM, "--state-dir", state, "env", "--json", cwd=ROOT))
        yield {"state": state, "env": env, "bucket": env["DIRL_TEAM_BUCKET"], "up_log": out}
    finally:
        subprocess.run([*TEAM, "--state-dir", str(state), "down", "--purge"], cwd=ROOT, timeout=120)
        print("\nteam stack timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items()))


@pytest.fixture(scope="module")
def client_env(stack) -> dict:
    """What a client of the stack runs with: the S3 endpoint and keys from `team.py env`, but NOT
    MLFLOW_TRACKING_URI / DIRL_STORAGE_PATH: the profile in params.yaml must carry those."""
    env = base_env()
    env.update({k: v for k, v in stack["env"].items() if k.startswith(("AWS_", "MLFLOW_S3_"))})
    return env


@pytest.fixture(scope="module")
def s3(stack):
    import boto3

    e = stack["env"]
    return boto3.client(
        "s3",
        endpoint_url=e["AWS_ENDPOINT_URL"],
        aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
        region_name=e["AWS_DEFAULT_REGION"],
    )


def keys(s3, bucket: str, prefix: str) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


@pytest.fixture(scope="module")
def repo(stack, client_env, tmp_path_factory):
    """A git + DVC repository of this working tree, smoke profile + team profile (ports of this stack), the DVC
    remote in the bucket; `dvc repro` run once."""
    work = tmp_path_factory.mktemp("team-e2e") / "dirl"
    work.mkdir()
    copy_tree(work)
    write_profile(work / "params.yaml", work / "params" / "smoke.yaml")
    team = yaml.safe_load((ROOT / "params" / "team.yaml").read_text())
    # the committed profile, with the ports of this stack (the defaults may be taken on a test machine)
    team["mlflow"]["tracking_uri"] = stack["env"]["MLFLOW_TRACKING_URI"]
    overlay = work.parent / "team-here.yaml"
    overlay.write_text(yaml.safe_dump(team, sort_keys=False))
    write_profile(work / "params.yaml", overlay)
    dvc = str(BIN / "dvc")
    bucket = stack["bucket"]
    sh("git", "init", "-q", "-b", "main", cwd=work)
    sh(dvc, "remote", "add", "-f", "-d", "team", f"s3://{bucket}/dvc", cwd=work)
    sh(dvc, "remote", "modify", "team", "endpointurl", stack["env"]["AWS_ENDPOINT_URL"], cwd=work)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "smoke + team", cwd=work)
    t0 = time.monotonic()
    log = sh(dvc, "repro", cwd=work, env=client_env, timeout=1500)
    TIMES["dvc repro"] = time.monotonic() - t0
    return {"work": work, "log": log, "bucket": bucket}


def pg_rows(stack, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    # the database MLflow's server uses, as `team.py env` gives it (SQLAlchemy's URL: the driver named)
    dsn = stack["env"]["DIRL_TEAM_BACKEND_STORE_URI"].replace("postgresql+psycopg2://", "postgresql://")
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


# ----------------------------------------------------------------------------- tests


def test_stack_is_up_and_profile_applied(stack, repo, s3):
    assert "healthy" in stack["up_log"] and "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in stack["up_log"]
    st = status(stack)
    assert st["healthy"] and all(s["healthy"] for s in st["services"].values()), st
    assert [s["port"] for s in st["services"].values()] == ports(stack)  # status and env agree
    # the three endpoints answer, each in its own protocol
    with urllib.request.urlopen(stack["env"]["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
        assert r.status == 200
    s3.head_bucket(Bucket=stack["bucket"])
    assert pg_rows(stack, "SELECT current_database()") == [("mlflow",)]
    params = yaml.safe_load((repo["work"] / "params.yaml").read_text())
    assert params["mlflow"]["tracking_uri"] == stack["env"]["MLFLOW_TRACKING_URI"]
    assert params["cluster"]["storage_path"] == f"s3://{repo['bucket']}/ray_results"
    overlay = yaml.safe_load((ROOT / "params" / "team.yaml").read_text())
    assert set(overlay) == {"cluster", "mlflow"}, "params/team.yaml holds only what differs from params.yaml"


def test_repro_records_runs_and_model_in_postgres(stack, repo):
    assert ran(repo["log"]) == STAGES, repo["log"][-3000:]
    work = repo["work"]
    run = json.loads((work / "results/train/run.json").read_text())
    model = json.loads((work / "results/register/model.json").read_text())
    assert run["tracking_uri"] == model["tracking_uri"] == stack["env"]["MLFLOW_TRACKING_URI"]
    assert not (work / "mlflow.db").exists() and not (work / "ray_results").exists()  # nothing went local
    # the rows, straight from PostgreSQL
    runs = dict(
        pg_rows(
            stack,
            "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e "
            "ON r.experiment_id = e.experiment_id WHERE e.name = %s",
            ("dirl",),
        )
    )
    assert runs.get(run["run_id"]) == "FINISHED", runs
    assert len(runs) >= 3, runs  # tune parent + trial + train at least
    versions = pg_rows(stack, "SELECT version, run_id, source FROM model_versions WHERE name = %s", (model["name"],))
    assert (int(model["version"]), run["run_id"]) in [(v, r) for v, r, _ in versions], versions
    aliases = dict(
        pg_rows(stack, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (model["name"],))
    )
    assert aliases.get("challenger") == int(model["version"]), aliases


def test_artifacts_and_checkpoints_are_objects_in_the_bucket(stack, repo, s3):
    run = json.loads((repo["work"] / "results/train/run.json").read_text())
    arts = keys(s3, repo["bucket"], "mlartifacts/")
    assert any(f"/{run['run_id']}/" in k for k in arts), arts[:50]  # the train run's artifacts (config, curves)
    mlmodels = [k for k in arts if k.endswith("/MLmodel")]  # the logged (and registered) pyfunc model
    assert mlmodels, arts[:50]
    if run.get("model_id"):
        assert any(run["model_id"] in k for k in mlmodels), (run["model_id"], mlmodels)
    ckpts = keys(s3, repo["bucket"], "ray_results/")
    assert run["storage_path"] == f"s3://{repo['bucket']}/ray_results", run
    assert any(k.startswith(f"ray_results/{run['name']}/") and "/checkpoint_" in k for k in ckpts), ckpts[:50]
    assert any(not k.startswith(f"ray_results/{run['name']}/") for k in ckpts), "the tune stage's run folder"


def _masks(folder: Path) -> dict[str, bytes]:
    import cv2

    out = {}
    for p in sorted(folder.glob("*_mask.png")):
        out[p.name] = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).tobytes()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    import cv2
    import numpy as np

    d = tmp_path_factory.mktemp("predict-in")
    rng = np.random.default_rng(7)
    for i in range(3):
        img = (rng.random((80 + 8 * i, 96, 3)) * 255).astype("uint8")
        img[20:50, 30:70] = (img[20:50, 30:70] * 0.4 + 120).astype("uint8")  # a region that does not match
        cv2.imwrite(str(d / f"img{i}.png"), img)
    return d


def test_push_then_pull_in_a_fresh_clone_predicts_the_same(stack, repo, client_env, s3, inputs, tmp_path):
    work, dvc = repo["work"], str(BIN / "dvc")
    t0 = time.monotonic()
    sh(dvc, "push", cwd=work, env=client_env)
    TIMES["dvc push"] = time.monotonic() - t0
    assert keys(s3, repo["bucket"], "dvc/files/md5/"), "dvc push wrote nothing to the bucket"
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "lock", "--allow-empty", cwd=work)
    first = sh(
        BIN / "dirl",
        "predict",
        inputs,
        "--model",
        "models:/dirl@challenger",
        "--out",
        tmp_path / "first",
        cwd=work,
        env=client_env,
    )

    mate = tmp_path / "teammate"
    sh("git", "clone", "-q", work, mate, cwd=tmp_path)
    assert not (mate / "data").exists() and not (mate / "results").exists() and not (mate / ".dvc" / "cache").exists()
    t0 = time.monotonic()
    sh(dvc, "pull", cwd=mate, env=client_env)
    TIMES["dvc pull"] = time.monotonic() - t0
    assert (mate / "data/shards/manifest.json").is_file() and (mate / "results/train/model.pt").is_file()
    assert (mate / "results/train/model.pt").read_bytes() == (work / "results/train/model.pt").read_bytes()
    status = sh(dvc, "status", cwd=mate, env=client_env)
    assert "up to date" in status.lower(), status
    second = sh(
        BIN / "dirl",
        "predict",
        inputs,
        "--model",
        "models:/dirl@challenger",
        "--out",
        tmp_path / "second",
        cwd=mate,
        env=client_env,
    )
    assert not (mate / "mlflow.db").exists(), "the clone must use the tracking server, not a local store"
    a, b = _masks(tmp_path / "first"), _masks(tmp_path / "second")
    assert len(a) == 3 and a.keys() == b.keys(), (first[-2000:], second[-2000:])
    assert a == b, "the same registered model gave different masks in the two clones"


LOCKER = """
import glob, json, os, sys, time
import importlib, mlflow
a = json.loads(sys.argv[1])
registry_lock = importlib.import_module(a["module"]).registry_lock
client = mlflow.MlflowClient(a["uri"])
client.search_registered_models(max_results=1)  # connect before the barrier
open(a["barrier"] + str(os.getpid()), "w").close()
while len(glob.glob(a["barrier"] + "*")) < 2:
    time.sleep(0.005)
spans = []
for _ in range(3):
    with registry_lock(client, a["name"], a["uri"], timeout=120):
        t0 = time.time(); time.sleep(0.4); spans.append([t0, time.time()])
print("RESULT " + json.dumps(spans))
"""

RACE = """
import importlib, json, os, sys, time
from dirl.config import load_config
a = json.loads(sys.argv[1])
promote = importlib.import_module(a["module"]).promote
cfg = load_config("params.yaml", overrides={"register.model_name": a["name"]})
while not os.path.exists(a["go"]):
    time.sleep(0.01)
r = promote(cfg, force=True, reason="race", version=a["version"])
print("RESULT " + json.dumps({"champion": r["champion"], "previous": r["previous"]}))
"""


def _spawn(code: str, arg: dict, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(arg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=cwd,
    )


def _results(procs, timeout: float) -> list:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.split("RESULT ", 1)[1]))
    return out


def test_registry_lock_is_exclusive_on_the_server(stack, repo, client_env, tmp_path):
    import mlflow

    uri = stack["env"]["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("lock-server")
    arg = {"uri": uri, "name": "lock-server", "barrier": str(tmp_path / "barrier."), "module": "dirl.lifecycle.release"}
    spans = sorted(
        s for r in _results([_spawn(LOCKER, arg, client_env, repo["work"]) for _ in range(2)], 240) for s in r
    )
    assert len(spans) == 6
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"critical sections overlap: {spans}"
    assert not [t for t in client.get_registered_model("lock-server").tags if t.startswith("dirl.lock")]


def test_racing_promotions_against_the_server(stack, repo, client_env, tmp_path):
    """Two processes force-promote v2 and v3 of a model at once: the lock and the re-read make them serial."""
    import importlib

    import mlflow

    reg = importlib.import_module("dirl.lifecycle.release")
    CHAMPION, HOLD_ENV, PREVIOUS = reg.CHAMPION, reg.HOLD_ENV, reg.PREVIOUS

    uri = stack["env"]["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)
    model = json.loads((repo["work"] / "results/register/model.json").read_text())
    source = client.get_model_version(model["name"], model["version"]).source
    name = "dirl-race"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        for _ in range(3):
            mlflow.register_model(source, name)  # three versions of the registered model's files
    finally:
        mlflow.set_tracking_uri(before)
    client.set_registered_model_alias(name, CHAMPION, "1")
    go = tmp_path / "go"
    env = {**client_env, HOLD_ENV: "1.5"}
    procs = [
        _spawn(RACE, {"name": name, "go": str(go), "version": v, "module": "dirl.lifecycle.release"}, env, repo["work"])
        for v in ("2", "3")
    ]
    time.sleep(2.0)
    go.touch()
    results = _results(procs, 400)
    final = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    first, second = sorted(results, key=lambda r: r["previous"] != "1")
    assert first["previous"] == "1"  # the first promotion demoted the original champion ...
    assert second["previous"] == first["champion"]  # ... and the second demoted the first, not v1 again
    assert final == {CHAMPION: second["champion"], PREVIOUS: first["champion"]}
    rows = pg_rows(stack, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (name,))
    assert {a: str(v) for a, v in rows} == final  # what the server says is what PostgreSQL holds


def test_raw_archive_is_fetched_from_the_bucket(stack, s3, tmp_path, monkeypatch):
    from dirl.data.download import LockFile, fetch

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"composite bytes\n" * 1000
        info = tarfile.TarInfo("HTest/composite_images/a_1_1.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    bucket = stack["bucket"]
    s3.put_object(Bucket=bucket, Key="raw/HTest.tar.gz", Body=buf.getvalue())
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(k, stack["env"][k])
    got = fetch(f"s3://{bucket}/raw/HTest.tar.gz", tmp_path / "dl", LockFile(tmp_path / "lock.json"), progress=False)
    assert got.read_bytes() == buf.getvalue()


def test_up_again_changes_nothing_and_brings_back_a_killed_stack(stack, repo, s3):
    import mlflow

    before = status(stack)
    assert before["healthy"], before
    again = team(stack, "up")
    assert "postgres: already running" in again and "s3, mlflow: already running" in again, again
    assert status(stack)["pids"] == before["pids"], "a second `up` replaced running processes"

    # a crash: mlflow's serving process, then PostgreSQL's postmaster, SIGKILLed
    pg_port, s3_port, mlflow_port = ports(stack)
    (server,) = listening(mlflow_port)
    server.kill()
    assert not still_running(psutil.wait_procs([server], timeout=30)[1])  # its database connections are closed
    (postmaster,) = listening(pg_port)
    backends = postmaster.children()
    postmaster.kill()
    assert not still_running(psutil.wait_procs([postmaster, *backends], timeout=60)[1]), "PostgreSQL's processes live"
    down = subprocess.run([*TEAM, "--state-dir", str(stack["state"]), "status"], capture_output=True, text=True)
    assert down.returncode == 1 and "DOWN" in down.stdout, down.stdout

    t0 = time.monotonic()
    out = team(stack, "up")
    TIMES["team up after a crash"] = time.monotonic() - t0
    after = status(stack)
    assert after["healthy"], (after, out)
    assert after["pids"]["postgres"] != before["pids"]["postgres"] and after["pids"]["honcho"], after
    # the runs survived in PostgreSQL and the new mlflow server serves them; the (empty) bucket is there again
    run = json.loads((repo["work"] / "results/train/run.json").read_text())
    assert mlflow.MlflowClient(stack["env"]["MLFLOW_TRACKING_URI"]).get_run(run["run_id"]).info.status == "FINISHED"
    s3.head_bucket(Bucket=stack["bucket"])


def test_down_stops_every_process_and_purge_removes_the_state(stack):
    st = status(stack)
    assert st["healthy"], st
    # the processes of the stack: the two `status` names (honcho, the postmaster), all they started, and whatever
    # listens on the three ports
    procs = [psutil.Process(pid) for pid in st["pids"].values()]
    procs += [c for p in list(procs) for c in p.children(recursive=True)]
    procs += [p for port_ in ports(stack) for p in listening(port_)]
    assert len(procs) >= 5, procs  # honcho, its two servers, the postmaster and its workers at least
    t0 = time.monotonic()
    team(stack, "down", timeout=120)
    TIMES["team down"] = time.monotonic() - t0
    assert not still_running(procs), f"still running after down: {still_running(procs)}"
    assert all(refused(p) for p in ports(stack)), "a port of the stack still accepts connections"
    assert not (Path(st["pg_data"]) / "postmaster.pid").exists(), "PostgreSQL was not shut down cleanly"
    down = subprocess.run([*TEAM, "--state-dir", str(stack["state"]), "status"], capture_output=True, text=True)
    assert down.returncode == 1 and down.stdout.count("DOWN") == 3, down.stdout

    team(stack, "down", "--purge", timeout=120)
    assert not stack["state"].exists() and not Path(st["pg_data"]).exists()
