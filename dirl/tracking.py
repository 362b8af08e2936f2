"""MLflow tracking: every MLflow run is opened and closed here.

    exp_id = setup(cfg)                                  # URI + experiment, before any mlflow call
    run = open_run(cfg, "train-x", tags, record=path)    # create, or reopen the run recorded in ``path``
    with closing(run):                                   # FINISHED on success, FAILED (with the error) if not
        MlflowEpochLogger(run.uri, run.run_id).sync(history)
    reconcile_child_runs(...)                            # tune: every trial's child run complete and closed

:func:`setup` points MLflow at the tracking URI of the config (an absolute ``sqlite:///`` store in the state
root by default, see :mod:`dirl.workspace`, or an ``http://host:port`` server), checks that the store is
reachable and returns the experiment id.
For a SQLite store the experiment's artifacts live beside the database in ``mlartifacts/``
(MLflow's own default, ``./mlruns`` under the current directory, would scatter them).

"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dirl import workspace
from dirl.config import Config
from dirl.io import write_json_atomic
from dirl.progress import verbose

log = logging.getLogger("dirl.tracking")

EXPERIMENT_KIND, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
# The runs table as the project links to it: a view (MLflow's shared view state, an experiment tag) that shows the
# figures that matter as columns; the UI hides every metric column otherwise.
RUNS_VIEW = "dirl-runs"
RUNS_VIEW_COLUMNS = (
    "test/IoU",
    "test/prior_IoU",
    "test/AP",
    "val/best_IoU",
    "val/selected_IoU",
    "val/prior_IoU",
    "perf/img_per_s",
)


def runs_url(base: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment (``base``: ``http://127.0.0.1:5000``): the model-training
    view (``workflowType=machine_learning``; without it MLflow 3.17 opens the GenAI overview) with the project's
    columns (:data:`RUNS_VIEW`)."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={RUNS_VIEW}"
    )


PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value (characters)
BATCH_MAX = 100  # MLflow's limit on params per log_batch call


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI and the fix."""


def tracking_uri(cfg: Config, root: str | os.PathLike | None = None) -> str:
    """The MLflow tracking URI: ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store in
    the state root (``mlflow.db``, see :mod:`dirl.workspace`)."""
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{workspace.mlflow_db(root).resolve()}"


def _server_hint(uri: str) -> str:
    return (
        f"start it with `make mlflow-ui`, or `mlflow server --backend-store-uri sqlite:////abs/path/mlflow.db "
        f"--artifacts-destination /abs/path/mlartifacts --host 127.0.0.1 --port 5000`, "
        f'or set mlflow.tracking_uri to "" in params.yaml to use a local SQLite store (was {uri!r})'
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
        db = Path(uri[len("sqlite:///") :])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return (db.parent / "mlartifacts" / safe).resolve().as_uri()
    return None


def quiet_mlflow() -> None:
    """MLflow's INFO lines (database migrations, input-example validation), its pickling notice and its artifact
    progress bars stay off the console unless ``dirl -v`` (``$DIRL_VERBOSE``)."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def setup(cfg: Config, root: str | os.PathLike | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the configured tracking URI and experiment; return the experiment id.

    Sets ``MLFLOW_TRACKING_URI`` and ``MLFLOW_DISABLE_TELEMETRY`` in the environment as well, so that
    processes started afterwards (Ray workers) use the same store.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    quiet_mlflow()
    uri = tracking_uri(cfg, root)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
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
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
                exp_id = found.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"MLflow tracking store {uri} failed: {e}; {_server_hint(uri)}") from None
    try:  # the MLflow UI opens an experiment of this kind on its runs table (model training), not the GenAI view
        tags = client.get_experiment(exp_id).tags
        if tags.get(EXPERIMENT_KIND) != KIND_TRAINING:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND, KIND_TRAINING)
        view = json.dumps({"selectedColumns": [f"metrics.`{m}`" for m in RUNS_VIEW_COLUMNS]})
        if tags.get(f"mlflow.sharedViewState.{RUNS_VIEW}") != view:
            client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{RUNS_VIEW}", view)
    except mlflow.exceptions.MlflowException:
        pass  # a read-only or older store: cosmetic only
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The workspace's HEAD commit (suffixed ``-dirty`` with uncommitted changes); "" outside git."""
    cwd = str(root or workspace.root())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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
        client.log_batch(run_id, params=todo[i : i + BATCH_MAX])
    return changed


def start_child_run(parent_id: str, name: str, tags: Mapping[str, str] | None = None):
    """Start (and make active) a run nested under ``parent_id``; use it as a context manager."""
    import mlflow

    return mlflow.start_run(run_name=name, parent_run_id=parent_id, nested=True, tags=dict(tags or {}))


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_tags(root: str | os.PathLike | None = None) -> dict[str, str]:
    """MLflow's standard tags, which the UI shows as "Created by", "Source" and the git commit: the user, the
    command (``stages.py train``, ``dirl evaluate``), and the workspace's git commit, branch, remote and
    whether the tree had uncommitted changes."""
    import getpass

    root = Path(root or workspace.root())
    entry = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:3]])
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": entry[:500]}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        tags["mlflow.source.git.dirty"] = str(commit.endswith("-dirty")).lower()
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
        remote = _git(root, "config", "--get", "remote.origin.url")
        if remote:
            tags["mlflow.source.git.repoURL"] = remote
    return tags


def log_datasets(client, run_id: str, data_dirs: Sequence[str | os.PathLike], splits: Mapping[str, str]) -> int:
    """Log the shard folders' ``splits`` (split -> MLflow context: ``{"train": "training", "val": "validation"}``)
    as the run's dataset inputs (the UI's "Datasets" column): name ``<folder>-<split>``, digest = the manifest's
    dataset hash, source = the shard folder, profile = the row count. Returns how many were logged."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for d in data_dirs:
        manifest = Path(str(d)) / "manifest.json"
        try:
            info = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        for split, context in splits.items():
            rows = (info.get("splits") or {}).get(split)
            if not rows:
                continue
            ds = Dataset(
                name=f"{Path(str(d)).name}-{split}",
                digest=str(info.get("dataset_hash", ""))[:16] or "none",
                source_type="local" if "://" not in str(d) else str(d).split("://", 1)[0],
                source=json.dumps({"uri": str(d), "split": split}),
                profile=json.dumps({"num_rows": rows, "sources": info.get("sources", {})}),
            )
            inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def provenance_tags(
    root: str | os.PathLike | None = None, data_dirs: Sequence[str | os.PathLike] = ()
) -> dict[str, str]:
    """Tags that pin a run to its code and data: MLflow's source and git tags (:func:`source_tags`), the git
    commit, dvc.lock output hashes, shard manifests."""
    root = Path(root or workspace.root())
    tags = source_tags(root)
    commit = tags.get("mlflow.source.git.commit", "")
    if commit:
        tags["git_commit"] = commit + ("-dirty" if tags.get("mlflow.source.git.dirty") == "true" else "")
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


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    """An open MLflow run: its client, ids and store; ``reopened`` when a resumed run was found."""

    client: Any
    run_id: str
    experiment_id: str
    uri: str
    reopened: bool = False


def open_run(
    cfg: Config,
    name: str,
    tags: Mapping[str, str],
    *,
    root: str | os.PathLike | None = None,
    record: Path | None = None,
    parent_run_id: str | None = None,
) -> Run:
    """Create an MLflow run in the configured experiment, or reopen the one named in ``record`` (a JSON file a
    resumed Ray run keeps beside its checkpoints) when it is still active in the same store; a new run is
    written to ``record``. ``parent_run_id`` nests it (``mlflow.parentRunId``)."""
    import mlflow

    exp_id = setup(cfg, root)
    uri = tracking_uri(cfg, root)
    client = mlflow.MlflowClient(uri)
    if record is not None and record.is_file():
        try:
            prev = json.loads(record.read_text())
            run = client.get_run(prev["run_id"])
            if run.info.lifecycle_stage == "active" and prev.get("tracking_uri") == uri:
                client.update_run(run.info.run_id, status="RUNNING")
                return Run(client, run.info.run_id, run.info.experiment_id, uri, True)
        except (ValueError, KeyError, mlflow.exceptions.MlflowException):
            pass  # unreadable record or a run of another store: start a new MLflow run
    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=name, tags=tags)
    if record is not None:
        write_json_atomic(record, {"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": uri})
    return Run(client, run.info.run_id, exp_id, uri)


@contextlib.contextmanager
def finishing(run: Run) -> Iterator[Run]:
    """Close ``run`` FINISHED when the block succeeds, FAILED (with the error as a tag) when it raises."""
    try:
        yield run
    except BaseException as e:
        record_failure(run.client, run.run_id, e)
        raise
    run.client.set_terminated(run.run_id, status="FINISHED")


# The MLflow name of each figure of a history row (:mod:`dirl.train.worker`): grouped by prefix, so that the UI
# draws train/, val/ and perf/ as sections (val/IoU first among them); counts (``steps``) are not metrics.
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "val_iou": "val/IoU",
    "val_ap": "val/AP",
    "val_f1": "val/F1",
    "best_val_iou": "val/best_IoU",
    "lr": "train/lr",
    "images_per_s": "perf/img_per_s",
    "epoch_s": "perf/epoch_s",
    "step_s": "perf/step_s",
    "epoch_cpu_s": "perf/epoch_cpu_s",
}
NOT_METRICS = ("epoch", "steps")


def metric_name(key: str) -> str:
    """The MLflow metric name of a history or summary figure: ``val_iou`` -> ``val/IoU``, ``loss_bce`` ->
    ``train/loss_bce``, ``best_val_ap`` -> ``val/best_AP``, ``selected_val_iou`` -> ``val/selected_IoU``; a name
    with a ``/`` is kept."""
    if "/" in key or key in EPOCH_METRICS:
        return EPOCH_METRICS.get(key, key)
    if key.startswith("loss_"):
        return f"train/{key}"
    for kind in ("best", "selected"):
        if key.startswith(f"{kind}_val_"):
            base = EPOCH_METRICS.get(key[len(kind) + 1 :], "val/" + key[len(kind) + 5 :])
            section, name = base.split("/", 1)
            return f"{section}/{kind}_{name}"
    return key


class MlflowEpochLogger:
    """Rank 0's MLflow writer: params once, one point per metric and epoch, never the same epoch twice."""

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri)
        self.run_id = run_id
        logged = self.client.get_metric_history(run_id, metric_name("train_loss"))
        self.logged_epochs = {int(m.step) for m in logged}

    def log_params(self, params: dict) -> None:
        """Log the config flat, once; values changed since (a resume with more epochs) become tags."""
        changed = log_params_flat(params, run_id=self.run_id, client=self.client)
        for key, (old, new) in changed.items():
            self.client.set_tag(self.run_id, f"resumed_with.{key}", f"{old} -> {new}"[:5000])

    def log_epoch(self, row: dict) -> bool:
        """Log one history row at ``step=row['epoch']``; False when the run already holds that epoch."""
        from mlflow.entities import Metric

        epoch = int(row["epoch"])
        if epoch in self.logged_epochs:
            return False
        ts = int(time.time() * 1000)
        metrics = [
            Metric(metric_name(k), float(v), ts, epoch)
            for k, v in row.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and math.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)  # one transaction: the whole epoch or nothing
        self.logged_epochs.add(epoch)
        return True

    def sync(self, history: list[dict]) -> int:
        """Log every epoch of ``history`` the run lacks; a tracking-store error is a warning, retried next epoch."""
        import mlflow

        n = 0
        try:
            for row in history:
                n += self.log_epoch(row)
        except (mlflow.exceptions.MlflowException, OSError) as e:
            log.warning("MLflow logging failed (%s); epochs will be logged at the next epoch or restart", e)
        return n


# ----------------------------------------------------------------------------- tune's child runs


def trial_title(trial_id: str, values: dict[str, Any]) -> str:
    """A trial's run name in the MLflow runs table: ``trial 00001 lr=0.0012 weight_decay=0``."""
    shown = " ".join(
        f"{k.split('.', 1)[-1]}={v:.2g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
        for k, v in values.items()
    )
    return f"trial {trial_id.rsplit('_', 1)[-1]} {shown}".strip()


def error_text(e: BaseException) -> tuple[str, str]:
    """(one line: the innermost ``Type: message``, the full text) of an exception from a trial."""
    full = f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    short = next(
        (
            ln
            for ln in reversed(lines)
            if ":" in ln
            and ln.split(":", 1)[0].replace(".", "").isidentifier()
            and ("Error" in ln.split(":", 1)[0] or "Exception" in ln.split(":", 1)[0])
        ),
        None,
    )
    return (short or (f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__))[:500], full[:5000]


def record_failure(client, run_id: str, e: BaseException) -> None:
    short, full = error_text(e)
    client.set_tag(run_id, "error", short)
    client.set_tag(run_id, "error_detail", full)
    client.set_terminated(run_id, status="FAILED")


def child_runs(client, exp_id: str, parent_id: str) -> dict[str, Any]:
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000)
    return {r.data.tags.get("trial_id", ""): r for r in runs}


def reconcile_child_runs(client, uri: str, exp_id: str, parent_id: str, trials: list[dict]) -> None:
    """Make every trial's MLflow child run complete: create it when the driver never ran, log epochs it lacks
    (a trial stopped by ASHA dies right after its last report), and close it with the trial's status."""
    from mlflow.entities import Param

    for t in trials:
        if not t["run_id"]:
            tags = {"mlflow.parentRunId": parent_id, "stage": "tune", "trial_id": t["trial_id"]}
            name = trial_title(t["trial_id"], {k: v for k, v in t["values"].items() if v is not None})
            t["run_id"] = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            params = [Param(k, str(v)) for k, v in t["values"].items() if v is not None]
            if params:
                client.log_batch(t["run_id"], params=params)
        run_id = t["run_id"]
        if t["history"]:
            MlflowEpochLogger(uri, run_id).sync(t["history"])
        run = client.get_run(run_id)
        client.set_tag(run_id, "tune.status", t["status"])
        if t["status"] == "failed":
            if not run.data.tags.get("error"):
                client.set_tag(run_id, "error", t["error"] or "the trial failed (see the Ray Tune trial folder)")
            if run.info.status != "FAILED":
                client.set_terminated(run_id, status="FAILED")
        else:  # a driver stopped by ASHA may have seen its run abort: that is no failure
            for tag in ("error", "error_detail"):
                if tag in run.data.tags:
                    client.delete_tag(run_id, tag)
            if run.info.status != "FINISHED":
                client.set_terminated(run_id, status="FINISHED")
