"""Cluster launch files: the `ray up` config against Ray's own schema, the KubeRay manifests, the
pipeline runner script, and (slow) a real two-node Ray cluster on this machine running a spread
TorchTrainer with checkpoints on the shared storage folder."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers.paths import PARAMS, ROOT

CLUSTER = ROOT / "pipeline" / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
RUN_SH = CLUSTER / "run-pipeline.sh"
VENV_BIN = Path(sys.executable).parent

# Paths of the repository that a cluster node must receive.
NEEDED = ["dirl/data", "dirl/stages", "params.yaml", "dvc.yaml", "pyproject.toml", ".git", ".dvc/config"]


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _ray_up() -> dict:
    return yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())


def _docker_env(cfg: dict) -> dict[str, str]:
    """``--env K=V`` entries of the docker run options as a dict."""
    env = {}
    for opt in cfg["docker"]["run_options"]:
        parts = shlex.split(opt)
        if parts[0] in ("--env", "-e"):
            key, value = parts[1].split("=", 1)
            env[key] = value
    return env


def _docker_volumes(cfg: dict) -> dict[str, str]:
    """``-v host:container`` bind mounts of the docker run options, container path -> host path."""
    vols = {}
    for opt in cfg["docker"]["run_options"]:
        parts = shlex.split(opt)
        if parts[0] in ("-v", "--volume"):
            host, container = parts[1].split(":")[:2]
            vols[container] = host
    return vols


def _check_overrides(args: list[str]) -> dict:
    """Every ``-S key=value`` in ``args`` must be a valid params.yaml override; return them."""
    from dirl.config import load_config, parse_override

    pairs = [args[i + 1] for i, a in enumerate(args) if a in ("-S", "--set-param")]
    assert pairs, f"no -S overrides in {args}"
    overrides = dict(parse_override(p) for p in pairs)
    load_config(PARAMS, overrides)  # raises ConfigError naming a wrong key/value
    return overrides


# ----------------------------------------------------------------------------- ray up


def test_ray_up_config_validates_against_the_installed_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _ray_up()
    jsonschema.validate(cfg, _ray_schema())
    # The same preparation `ray up` does before it talks to the cloud: AWS defaults merged in,
    # setup commands merged per node type, docker settings checked, then validated again.
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    assert full["head_node_type"] in full["available_node_types"]


def test_ray_up_schema_check_catches_a_misspelt_field():
    jsonschema = pytest.importorskip("jsonschema")

    cfg = _ray_up()
    worker = next(k for k in cfg["available_node_types"] if k != cfg["head_node_type"])
    cfg["available_node_types"][worker]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _ray_schema())


def test_ray_up_installs_the_project_and_passes_storage_and_mlflow():
    cfg = _ray_up()
    # The repository is synced to every node and installed from there.
    mounts = {remote: (ROOT / os.path.expanduser(local)).resolve() for remote, local in cfg["file_mounts"].items()}
    code = [remote for remote, local in mounts.items() if local == ROOT]
    assert code, f"no file_mounts entry syncs the repository root (run `ray up` from {ROOT}): {cfg['file_mounts']}"
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert any(re.search(rf"-e\s+{re.escape(code[0])}(\s|$)", c) for c in installs), installs
    # rsync excludes are anchored at the repo root and keep what the nodes need.
    for pattern in cfg["rsync_exclude"]:
        assert pattern.startswith(("/", "**/")), f"unanchored rsync_exclude {pattern!r} would match nested paths"
        excluded = pattern.strip("/")
        assert not any(n == excluded or n.startswith(excluded + "/") for n in NEEDED), pattern

    env = _docker_env(cfg)
    storage = env["DIRL_STORAGE_PATH"]
    assert storage.startswith("/") or "://" in storage
    if storage.startswith("/"):  # a path must lie on a volume shared by all nodes
        assert any(storage.startswith(c.rstrip("/") + "/") for c in _docker_volumes(cfg)), (
            storage,
            _docker_volumes(cfg),
        )
    assert re.match(r"https?://[^/]+", env["MLFLOW_TRACKING_URI"])
    assert env.get("RAY_AUTH_MODE") == "token"

    # A GPU worker type that the cluster starts with, and a head that the workers join.
    gpu_types = [
        t
        for k, t in cfg["available_node_types"].items()
        if k != cfg["head_node_type"] and re.match(r"(g|p)\d", t["node_config"]["InstanceType"])
    ]
    assert gpu_types and gpu_types[0]["min_workers"] >= 1
    assert sum(t.get("max_workers", 0) for t in cfg["available_node_types"].values()) <= cfg["max_workers"]
    assert any("--head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


# ----------------------------------------------------------------------------- KubeRay


def _kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]


def _cluster_specs() -> dict[str, dict]:
    docs = {d["kind"]: d for d in _kuberay()}
    return {"RayCluster": docs["RayCluster"]["spec"], "RayJob": docs["RayJob"]["spec"]["rayClusterSpec"]}


def test_kuberay_documents_have_the_expected_kinds():
    import ray

    docs = _kuberay()
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PersistentVolumeClaim", "RayCluster", "RayJob"}
    for d in docs:
        assert d["apiVersion"] == ("v1" if d["kind"] == "PersistentVolumeClaim" else "ray.io/v1")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
    assert "ReadWriteMany" in kinds["PersistentVolumeClaim"]["spec"]["accessModes"]
    for spec in _cluster_specs().values():
        assert spec["rayVersion"] == ray.__version__  # image and manifest track the pinned Ray


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_cluster_spec_is_complete(kind):
    spec = _cluster_specs()[kind]
    pvc = next(d["metadata"]["name"] for d in _kuberay() if d["kind"] == "PersistentVolumeClaim")
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    assert len(groups) >= 2
    gpus = 0
    for name, group in groups:
        params = group["rayStartParams"]  # KubeRay's map[string]string: numbers must be quoted
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (name, params)
        pod = group["template"]["spec"]
        claim_volumes = {
            v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc
        }
        assert claim_volumes, f"{kind} group {name}: no volume of PVC {pvc}"
        for c in pod["containers"]:
            assert c["image"], (name, c)
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env.get("MLFLOW_TRACKING_URI", "").startswith("http"), (name, env)
            shared = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in claim_volumes]
            assert shared, f"{kind} group {name}: container {c['name']} does not mount the PVC"
            assert any(env["DIRL_STORAGE_PATH"].startswith(p.rstrip("/") + "/") for p in shared), (env, shared)
            gpus += int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (name, group)
    assert gpus >= 1, f"{kind}: no worker group requests nvidia.com/gpu"


def test_kuberay_cluster_and_job_run_the_same_image_and_settings():
    def shape(spec):
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        return [
            (c["image"], sorted((e["name"], e.get("value")) for e in c["env"]))
            for g in groups
            for c in g["template"]["spec"]["containers"]
        ]

    specs = _cluster_specs()
    assert shape(specs["RayCluster"]) == shape(specs["RayJob"])


def test_kuberay_job_entrypoint_runs_a_real_command_with_valid_overrides():
    job = next(d for d in _kuberay() if d["kind"] == "RayJob")
    args = shlex.split(job["spec"]["entrypoint"])
    script = next(a for a in args if a.endswith(".sh"))
    # The image copies the repository to /app (pipeline/cluster/Dockerfile).
    assert script.startswith("/app/") and (ROOT / script.removeprefix("/app/")).is_file(), script
    assert "COPY --chown=ray:users . /app" in (CLUSTER / "Dockerfile").read_text()
    extra = args[args.index("--") + 1 :]
    overrides = _check_overrides(extra)
    assert overrides["cluster.use_gpu"] is True

    # What the script runs, with the environment of the pods.
    env = next(c for c in _cluster_specs()["RayJob"]["headGroupSpec"]["template"]["spec"]["containers"])["env"]
    env = {**os.environ, **{e["name"]: e["value"] for e in env}}
    out = subprocess.run(
        ["bash", str(RUN_SH), "--dry-run", "--", *extra], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout.splitlines()[-1])
    assert cmd[:3] == ["dvc", "exp", "run"]
    resolved = _check_overrides(cmd)
    assert resolved["cluster.address"] == "auto"
    assert resolved["cluster.storage_path"] == env["DIRL_STORAGE_PATH"]
    assert resolved["mlflow.tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    dvc = VENV_BIN / "dvc" if (VENV_BIN / "dvc").exists() else "dvc"
    assert subprocess.run([str(dvc), "exp", "run", "--help"], capture_output=True, timeout=60).returncode == 0


# ----------------------------------------------------------------------------- run-pipeline.sh


def test_run_pipeline_refuses_to_run_without_shared_storage(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DIRL_STORAGE_PATH", "MLFLOW_TRACKING_URI")}
    out = subprocess.run(
        ["bash", str(RUN_SH), "--workspace", str(tmp_path / "ws")], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "DIRL_STORAGE_PATH" in out.stderr
    out = subprocess.run(
        ["bash", str(RUN_SH), "--dry-run"],
        env={**env, "DIRL_STORAGE_PATH": "relative/dir", "MLFLOW_TRACKING_URI": "http://m:5000"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "absolute path or a URI" in out.stderr
    assert not (tmp_path / "ws").exists()


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="the checkout has no .git to seed a workspace from")
def test_run_pipeline_seeds_the_workspace_once_without_local_outputs(tmp_path):
    ws = tmp_path / "shared" / "workspace"
    out = subprocess.run(
        ["bash", str(RUN_SH), "--workspace", str(ws), "--seed-only"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for needed in ["params.yaml", "dvc.yaml", ".git/HEAD", "dirl/data/__init__.py", "pipeline/cluster/run-pipeline.sh"]:
        assert (ws / needed).exists(), needed
    for left_out in [".venv", "data", "results", "ray_results", "mlflow.db"]:
        assert not (ws / left_out).exists(), left_out
    # A second run keeps the workspace as it is (its params and outputs belong to the experiments).
    (ws / "params.yaml").write_text("edited: true\n")
    out = subprocess.run(
        ["bash", str(RUN_SH), "--workspace", str(ws), "--seed-only"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and (ws / "params.yaml").read_text() == "edited: true\n"


# ----------------------------------------------------------------------------- local.sh


def _local(*args: str, state: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = ["bash", str(LOCAL_SH)] + (["--state-dir", str(state)] if state else []) + list(args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["DIRL_PYTHON"] = sys.executable
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_local_sh_usage_and_bad_arguments(tmp_path):
    out = _local("--help")
    assert out.returncode == 0 and all(w in out.stdout for w in ("start", "status", "stop", "--workers"))
    out = _local("start", "--workers", "two", state=tmp_path)
    assert out.returncode == 2 and "--workers" in out.stderr
    out = _local("start", "--auth", "none", state=tmp_path)
    assert out.returncode == 2 and "--auth" in out.stderr
    assert _local("frobnicate").returncode == 2
    out = _local("status", state=tmp_path / "none")
    assert out.returncode == 3 and "no cluster" in out.stdout
    assert not (tmp_path / "none").exists()  # status does not create state folders
    out = _local("stop", state=tmp_path)
    assert out.returncode == 0 and "no cluster" in out.stdout


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value
    return env


def _node_pids(state: Path) -> list[int]:
    return [int(line.split()[1]) for line in (state / "nodes").read_text().splitlines()]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _survivors(pgids: list[int], temp_dir: str) -> list[str]:
    """Live processes in the nodes' process groups, or naming the cluster's Ray temp folder."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [
        " ".join(r)
        for r in rows
        if len(r) == 4
        and not r[2].startswith("Z")
        and (int(r[1]) in pgids or temp_dir in r[3])
        and "ps -eo" not in r[3]
    ]


def _http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


TRAIN_ON_CLUSTER = """
import json, sys
from pathlib import Path
from dirl.config import load_config
from dirl.data.toy import toy_shards
from dirl.stages.train import run as train
tmp, storage = Path(sys.argv[1]), sys.argv[2]
data = toy_shards(tmp / "toy", n_train=16, n_val=4, size=32)
cfg = load_config("params.yaml", overrides={
    "model.name": "unet", "model.input_size": 32, "train.epochs": 1, "train.batch_size": 4,  # 2 per worker: BN
    "train.max_steps_per_epoch": 2, "cluster.num_workers": 2, "cluster.cpus_per_worker": 1.0,
    "cluster.placement_strategy": "STRICT_SPREAD", "train.precision": "fp32", "train.channels_last": False,
    "cluster.storage_path": storage, "train.use_tune_best": False, "cluster.address": "auto",
    "mlflow.tracking_uri": "sqlite:///" + str(tmp / "mlflow.db")})
out = train(cfg, out_dir=tmp / "out", data_dirs=[data], root=tmp, status_dir=tmp / "status")
print(json.dumps({"checkpoint": out["checkpoint"], "run_id": out["run_id"]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(sys.platform != "linux", reason="local.sh needs Linux (setsid, /proc)")
def test_local_cluster_spreads_torch_trainer_over_two_nodes(tmp_path):
    """Head + 1 worker node: a 2-worker STRICT_SPREAD TorchTrainer lands on both, checkpoints on the
    shared folder; a second cluster on the machine survives `stop` of the first."""
    state, other = tmp_path / "cluster", tmp_path / "other"
    try:
        t0 = time.perf_counter()
        out = _local("start", "--workers", "1", "--cpus-per-node", "2", state=state)
        start_s = time.perf_counter() - t0
        assert out.returncode == 0, out.stdout + out.stderr
        out_other = _local("start", "--workers", "0", state=other)
        assert out_other.returncode == 0, out_other.stdout + out_other.stderr

        env = _env_file(state / "cluster.env")
        storage = Path(env["DIRL_STORAGE_PATH"])
        assert storage.is_dir() and env["RAY_ADDRESS"] != _env_file(other / "cluster.env")["RAY_ADDRESS"]
        assert _local("status", state=state).returncode == 0

        # Token auth is on: the job API refuses a request without the cluster's token.
        token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        jobs = env["RAY_API_SERVER_ADDRESS"] + "/api/jobs/"
        assert _http_status(jobs, None) == 401 and _http_status(jobs, token) == 200

        t1 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, str(CLUSTER / "smoke.py"), "--workers", "2"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        smoke_s = time.perf_counter() - t1
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        res = json.loads(run.stdout.strip().splitlines()[-1])
        assert res["nodes_alive"] == 2
        assert len(res["node_ids"]) == 2 and len(set(res["node_ids"])) == 2
        assert set(res["node_ids"]) == set(res["alive_node_ids"])
        ckpt = Path(res["checkpoint"])
        assert ckpt.is_dir() and storage in ckpt.parents
        assert (ckpt / "model.pt").stat().st_size > 0
        assert json.loads((ckpt / "nodes.json").read_text()) == res["node_ids"]

        # The pipeline's own training: `train()` with 2 workers, one per node, checkpoints on shared storage.
        run = subprocess.run(
            [sys.executable, "-c", TRAIN_ON_CLUSTER, str(tmp_path), str(storage)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        status = [json.loads(p.read_text()) for p in sorted((tmp_path / "status").glob("rank-*.json"))]
        assert len(status) == 2 and len({s["node_id"] for s in status}) == 2, status
        assert {s["node_id"] for s in status} <= set(res["alive_node_ids"])
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert storage in Path(result["checkpoint"]).parents and Path(result["checkpoint"]).is_dir()

        pids, other_pids = _node_pids(state), _node_pids(other)
        temp_dir = next(
            line.split("=", 1)[1]
            for line in (state / "cluster.info").read_text().splitlines()
            if line.startswith("temp_dir=")
        )
        t2 = time.perf_counter()
        out = _local("stop", state=state)
        stop_s = time.perf_counter() - t2
        assert out.returncode == 0, out.stdout + out.stderr
        assert not any(_alive(p) for p in pids)
        assert _survivors(pids, temp_dir) == []
        assert not (state / "cluster.env").exists()
        assert all(_alive(p) for p in other_pids), "stopping one cluster hit another"
        assert _local("status", state=other).returncode == 0
        print(f"\ncluster start {start_s:.1f} s, smoke job {smoke_s:.1f} s (fit {res['fit_s']} s), stop {stop_s:.1f} s")
    finally:
        _local("stop", state=state)
        _local("stop", state=other)
