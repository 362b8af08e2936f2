"""Turn a model reference into a loaded model: a weights file, an MLflow run id, or a registry URI.

    model, info = load_model_ref("results/train/model.pt", cfg)        # weights file (dirl.weights format)
    model, info = load_model_ref("3f2a...c9", cfg)                       # MLflow run id: its logged weights
    model, info = load_model_ref("models:/dirl@champion", cfg)          # registered version by alias
    model, info = load_model_ref("models:/dirl/3", cfg)                 # registered version by number
    model, info = load_model_ref("runs:/3f2a...c9/model", cfg)          # a logged pyfunc model of a run

``info`` is the weights file's header (model name, options, input_size, metrics, epoch) plus ``ref``,
``label`` (a short display name) and, when known, ``run_id``, ``registered_name``, ``version``.

Every failure raises :class:`ModelRefError` (or :class:`dirl.weights.WeightsError` for a corrupt file, or
:class:`dirl.tracking.TrackingError` for an unreachable tracking server) with a message that names the
reference and says what exists instead: the aliases of a registered model, the artifacts of a run, the URI
of a server that is down and how to start it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dirl.config import Config
from dirl.tracking import TrackingError, check_reachable, tracking_uri
from dirl.weights import WeightsError, load_weights

if TYPE_CHECKING:
    import torch.nn as nn

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
WEIGHTS_SUFFIXES = (".pt", ".pth")


class ModelRefError(LookupError):
    """A model reference that does not resolve; the message names it and lists what exists."""


def client_for(cfg: Config):
    """An ``MlflowClient`` on the configured tracking URI, after checking that a server answers."""
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def parse_models_uri(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    body = ref[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in body:
        name, version = body.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ModelRefError(f"{ref!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


def _registered_names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models(max_results=1000))


def resolve_version(client, ref: str):
    """The ``ModelVersion`` that ``models:/name@alias`` or ``models:/name/<version>`` points at."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(ref)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = _registered_names(client)
        known = (
            f"registered models: {', '.join(names)}" if names else "no model is registered yet (run `dirl register`)"
        )
        raise ModelRefError(f"{ref}: no registered model named {name!r} in {client.tracking_uri}; {known}") from None
    if alias is not None:
        aliases = dict(model.aliases or {})
        if alias not in aliases:
            listed = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise ModelRefError(
                f"{ref}: model {name!r} has no alias {alias!r}; its aliases: {listed} "
                f"(`dirl register` sets @challenger, `dirl promote` sets @champion)"
            )
        version = str(aliases[alias])
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ModelRefError(f"{ref}: model {name!r} has no version {version}; versions: {versions or 'none'}") from None


def _pyfunc_weights(model_dir: Path) -> Path | None:
    """The weights file inside a downloaded pyfunc model folder (from its MLmodel file), if any."""
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        conf = yaml.safe_load(mlmodel.read_text()) or {}
        arts = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        entry = arts.get("weights")
        if isinstance(entry, dict) and entry.get("path"):
            path = model_dir / entry["path"]
            if path.is_file():
                return path
    found = sorted(p for p in model_dir.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
    return found[0] if found else None


def _load_from_dir(model_dir: Path, ref: str) -> tuple[nn.Module, dict]:

    weights = _pyfunc_weights(model_dir)
    if weights is None:
        raise ModelRefError(
            f"{ref}: the model folder holds no weights file (*.pt); it was not logged by `dirl register`"
        )
    return load_weights(weights)


def _download(uri: str, dst: str) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))


def _run_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of a run (recursive)."""
    out: list[str] = []
    for f in client.list_artifacts(run_id, path):
        out.extend(_run_artifacts(client, run_id, f.path) if f.is_dir else [f.path])
    return out


def _load_run(client, run_id: str, ref: str, tmp: str) -> tuple[nn.Module, dict]:
    """Weights logged by a run: a ``*.pt`` artifact, else a pyfunc model logged from that run."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ModelRefError(f"{ref}: no MLflow run with id {run_id} in {client.tracking_uri}") from None
    files = _run_artifacts(client, run_id)
    weights = [f for f in files if f.endswith(WEIGHTS_SUFFIXES)]
    if weights:
        pick = min(weights, key=lambda f: (f.count("/"), f))  # prefer the top-level model.pt
        local = client.download_artifacts(run_id, pick, tmp)
        return load_weights(local)
    try:
        logged = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        )
    except MlflowException:
        logged = []
    for lm in logged:
        model_dir = _download(f"models:/{lm.model_id}", tmp)
        if _pyfunc_weights(model_dir) is not None:
            return _load_from_dir(model_dir, ref)
    listed = ", ".join(files[:10]) or "none"
    raise ModelRefError(
        f"{ref}: run {run_id} has no logged model: no *.pt artifact and no logged pyfunc model "
        f"(its artifacts: {listed}); pass a weights file, or a run made by `dirl train` / `dirl register`"
    )


def load_model_ref(ref: str, cfg: Config) -> tuple[nn.Module, dict]:
    """Load the model that ``ref`` names (see the module docstring); returns (model in eval mode, info)."""
    ref = str(ref).strip()
    if not ref:
        raise ModelRefError("empty model reference: pass a weights path, a run id or models:/<name>@<alias>")
    path = Path(ref)
    if not ref.startswith(("models:/", "runs:/")) and (path.exists() or ref.endswith(WEIGHTS_SUFFIXES)):
        if path.is_dir():
            model, info = _load_from_dir(path, ref)
        else:
            model, info = load_weights(path)  # WeightsError names a missing or corrupt file
        return model, {**info, "ref": ref, "label": f"{path.name} ({info['model']})"}
    if not ref.startswith(("models:/", "runs:/")) and not RUN_ID_RE.match(ref):
        raise ModelRefError(
            f"{ref!r} is neither an existing weights file, an MLflow run id (32 hex digits), "
            "models:/<name>@<alias>, models:/<name>/<version> nor runs:/<run id>/<path>"
        )
    client = client_for(cfg)  # TrackingError names a server that is down and how to start it
    with tempfile.TemporaryDirectory(prefix="dirl-model-") as tmp:
        try:
            if ref.startswith("models:/"):
                mv = resolve_version(client, ref)
                model_dir = _download(f"models:/{mv.name}/{mv.version}", tmp)
                model, info = _load_from_dir(model_dir, ref)
                extra = {
                    "registered_name": mv.name,
                    "version": str(mv.version),
                    "run_id": mv.run_id,
                    "label": f"{mv.name} v{mv.version} ({info['model']})",
                }
            elif ref.startswith("runs:/"):
                model_dir = _download(ref, tmp)
                model, info = _load_from_dir(model_dir, ref) if model_dir.is_dir() else load_weights(model_dir)
                run_id = ref[len("runs:/") :].split("/", 1)[0]
                extra = {"run_id": run_id, "label": f"run {run_id[:8]} ({info['model']})"}
            else:
                model, info = _load_run(client, ref, ref, tmp)
                extra = {"run_id": ref, "label": f"run {ref[:8]} ({info['model']})"}
        except (ModelRefError, WeightsError):
            raise
        except Exception as e:  # mlflow raises MlflowException, OSError, requests errors ...
            if _is_connection_error(e):
                uri = tracking_uri(cfg)
                raise TrackingError(
                    f"MLflow tracking server {uri} stopped answering while resolving {ref} ({e})"
                ) from None
            raise ModelRefError(f"{ref}: cannot load it from {tracking_uri(cfg)}: {type(e).__name__}: {e}") from None
    return model, {**info, **extra, "ref": ref}


def _is_connection_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("connection refused", "max retries", "connectionerror", "failed to establish"))
