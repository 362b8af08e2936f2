"""MLflow tracking: URI + experiment set-up, run provenance tags (git, DVC, data) and flat params.

Every stage that records into MLflow goes through :func:`setup`, which points MLflow at the tracking
URI of the config (an absolute ``sqlite:///`` store in the workspace by default, or an
``http://host:port`` server), checks that the store is reachable and returns the experiment id.
For a SQLite store the experiment's artifacts live beside the database in ``mlartifacts/``
(MLflow's own default, ``./mlruns`` under the current directory, would scatter them).

    exp_id = setup(cfg)                      # before any mlflow call
    tags = provenance_tags(data_dirs=["data/shards"])
    with start_child_run(parent_id, "trial-3"):
        log_params_flat(cfg.to_dict())
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import yaml

from dirl.config import Config, tracking_uri, workspace_root

PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value (characters)
BATCH_MAX = 100  # MLflow's limit on params per log_batch call


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI and the fix."""


def _server_hint(uri: str) -> str:
    return (
        f"start it with `make mlflow-ui`, or `mlflow server --backend-store-uri sqlite:////abs/path/mlflow.db "
        f"--artifacts-destination /abs/path/mlartifacts --host 127.0.0.1 --port 5000`, "
        f"or set mlflow.tracking_uri to \"\" in params.yaml to use a local SQLite store (was {uri!r})"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` when ``uri`` is an http(s) server that does not answer ``/health``."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"MLflow tracking server {uri} answered HTTP {resp.status}; {_server_hint(uri)}")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({e}); {_server_hint(uri)}") from None


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``<db dir>/mlartifacts/<experiment>`` for SQLite, else
    the server's choice (None)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return (db.parent / "mlartifacts" / safe).resolve().as_uri()
    return None


def setup(cfg: Config, root: str | os.PathLike | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the configured tracking URI and experiment; return the experiment id.

    Sets ``MLFLOW_TRACKING_URI`` and ``MLFLOW_DISABLE_TELEMETRY`` in the environment as well, so that
    processes started afterwards (Ray workers) use the same store.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(cfg, root)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    name = experiment or cfg.mlflow.experiment
    client = mlflow.MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = client.create_experiment(name, artifact_location=artifact_root(uri, name))
            except mlflow.exceptions.MlflowException:  # created concurrently by another process
                exp_id = client.get_experiment_by_name(name).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"MLflow tracking store {uri} failed: {e}; {_server_hint(uri)}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The workspace's HEAD commit (suffixed ``-dirty`` with uncommitted changes); "" outside git."""
    cwd = str(root or workspace_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{sha}-dirty" if dirty else sha


def dvc_lock_hashes(path: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """``{"<stage>:<out path>": md5}`` for every stage output in ``dvc.lock``; {} when absent."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        lock = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TrackingError(f"{path}: not valid YAML ({e}); run `dvc repro` to rewrite it") from None
    hashes = {}
    for stage, body in (lock.get("stages") or {}).items():
        for out in (body or {}).get("outs") or []:
            digest = out.get("md5") or out.get("hash") or out.get("etag") or ""
            if isinstance(digest, str) and "path" in out:
                hashes[f"{stage}:{out['path']}"] = digest
    return hashes


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (lists and None as their str form)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = str(value)[:PARAM_VALUE_MAX]
    return flat


def log_params_flat(params: Mapping[str, Any], run_id: str | None = None, client=None) -> dict[str, tuple[str, str]]:
    """Log a nested mapping as flat dotted params to ``run_id`` (default: the active run).

    MLflow params are write-once: keys already logged with the same value are skipped, and keys logged
    earlier with another value (a resumed run with more epochs) are left as they were and returned as
    ``{key: (logged, new)}`` so the caller can record the change (e.g. as a tag).
    """
    import mlflow
    from mlflow.entities import Param

    client = client or mlflow.MlflowClient()
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise TrackingError("log_params_flat: no run_id given and no active MLflow run")
        run_id = active.info.run_id
    logged = client.get_run(run_id).data.params
    todo, changed = [], {}
    for key, value in flatten(params).items():
        if key not in logged:
            todo.append(Param(key, value))
        elif logged[key] != value:
            changed[key] = (logged[key], value)
    for i in range(0, len(todo), BATCH_MAX):
        client.log_batch(run_id, params=todo[i:i + BATCH_MAX])
    return changed


def start_child_run(parent_id: str, name: str, tags: Mapping[str, str] | None = None):
    """Start (and make active) a run nested under ``parent_id``; use it as a context manager."""
    import mlflow

    return mlflow.start_run(run_name=name, parent_run_id=parent_id, nested=True, tags=dict(tags or {}))


def provenance_tags(root: str | os.PathLike | None = None,
                    data_dirs: list[str | os.PathLike] = ()) -> dict[str, str]:
    """Tags that pin a run to its code and data: git commit, dvc.lock output hashes, shard manifests."""
    root = Path(root or workspace_root())
    tags = {}
    commit = git_commit(root)
    if commit:
        tags["git_commit"] = commit
    for key, digest in dvc_lock_hashes(root / "dvc.lock").items():
        tags[f"dvc.{key}"[:250]] = digest
    for d in data_dirs:
        manifest = Path(d) / "manifest.json"
        if manifest.exists():
            try:
                digest = json.loads(manifest.read_text()).get("dataset_hash", "")
            except ValueError:
                digest = ""
            if digest:
                tags[f"data.{Path(d).name}.dataset_hash"] = str(digest)
    return tags
