"""The MLflow model registry: register a trained model, promote it to champion, roll back.

    info = register.run(cfg)               # dirl.stages.register: new version of register.model_name, @challenger
    promote(cfg)                           # @champion <- @challenger if better by promote.margin
    promote(cfg, force=True, reason="...")  # promote anyway; recorded as tags on the version
    rollback(cfg)                          # @champion <- @previous

Aliases (MLflow's replacement for stages):
- ``@challenger`` (``register.alias``): the version the register stage (:mod:`dirl.stages.register`) made last;
- ``@champion``: the version to serve (``models:/<name>@champion``);
- ``@previous``: the champion before the last promotion or rollback.

Promotion evaluates the challenger and the champion on the same images (the ``evaluate.split`` composites of
``data/synth`` and ``data/shards``) and moves ``@champion`` only when the challenger's ``promote.metric``
exceeds the champion's by more than ``promote.margin``; otherwise it raises :class:`PromotionRefused` with both
numbers. With no champion yet, the challenger becomes champion. ``--force`` promotes regardless and tags the
version with who, when and why (``promote.forced``, ``promote.forced_by``, ``promote.forced_at``,
``promote.reason``). Every promotion tags the new champion with both scores.

Rollback swaps the two: ``@champion`` <- the ``@previous`` version and ``@previous`` <- the demoted champion,
so a second rollback undoes the first (``@previous`` is cleared when there was no champion). Without
``@previous`` there is nothing to roll back to (an error).

Concurrency. Alias moves happen under a lock, and the champion is re-read after the lock is acquired
(compare-and-set): if it moved while the scores were being computed, the comparison is redone against the new
champion. The lock is
- for a SQLite store: an exclusive ``flock`` on ``<db>.<model name>.lock`` beside the database file (every
  process using that store runs on the machine that holds the file);
- for a tracking server or any other store: one registered-model tag ``dirl.lock.<uuid>`` per contender,
  valued with its expiry. A contender writes its tag, then reads all lock tags; it holds the lock only when
  its tag is the only live one, otherwise it deletes its tag and retries after a random delay. MLflow has no
  compare-and-set, but this needs none: of two contenders, the one that reads second always sees the other's
  tag. A tag past its expiry (``LOCK_TTL_S``: a crashed holder) is ignored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from dirl.config import Config
from dirl.io import sha256_file
from dirl.lifecycle.evaluate import evaluate_set, flat_metrics, shard_set
from dirl.lifecycle.pyfunc import log_pyfunc
from dirl.lifecycle.resolve import ModelRefError, client_for, load_model_ref
from dirl.speed import default_device
from dirl.tracking import TrackingError, provenance_tags, tracking_uri
from dirl.weights import read_weights
from dirl.workspace import SHARD_DIRS

log = logging.getLogger(__name__)
CHAMPION, PREVIOUS = "champion", "previous"
LOCK_TAG = "dirl.lock"
LOCK_TTL_S = 600.0
LOCK_TIMEOUT_S = 900.0
HOLD_ENV = "DIRL_PROMOTE_HOLD_S"  # seconds to hold the lock before moving aliases (race tests widen the window)


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says why and what to do."""


class PromotionRefused(RegistryError):
    """The challenger does not beat the champion by the margin; the message holds both numbers."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ----------------------------------------------------------------------------- locking


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    def note_holder(fd: int) -> None:  # who holds it, for whoever finds the lock taken
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_who()} pid {os.getpid()} since {_now()}\n".encode(), 0)

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout, poll_interval=0.05, on_acquired=note_holder)
    try:
        lock.acquire()
    except Timeout:
        raise RegistryError(f"{path}: another promotion or rollback holds the lock for over {timeout:.0f} s") from None
    try:
        yield
    finally:
        lock.release()


def _lock_tags(client, name: str) -> dict[str, str]:
    tags = client.get_registered_model(name).tags or {}
    return {k: v for k, v in tags.items() if k.startswith(LOCK_TAG + ".")}


def _expired(expiry: str) -> bool:
    try:
        return float(expiry) < time.time()
    except ValueError:
        return True


@contextlib.contextmanager
def _tag_lock(client, name: str, timeout: float) -> Iterator[None]:
    """Mutual exclusion over a linearizable tag store: write my tag, then read all lock tags.

    I own the lock only when mine is the only live one. If A saw only its own tag, any competitor B wrote
    after A's read, so B's read (after its write) sees A's tag and B backs off; if both see both, both back
    off with a random delay and retry. No clock comparison between processes is needed.
    """
    mine = f"{LOCK_TAG}.{uuid.uuid4().hex}"
    deadline = time.monotonic() + timeout
    while True:
        client.set_registered_model_tag(name, mine, f"{time.time() + LOCK_TTL_S:.3f}")
        others = {k: v for k, v in _lock_tags(client, name).items() if k != mine and not _expired(v)}
        if not others:
            break
        client.delete_registered_model_tag(name, mine)
        if time.monotonic() > deadline:
            raise RegistryError(
                f"registered model {name!r}: lock tag(s) {sorted(others)} held for over "
                f"{timeout:.0f} s; delete them if their holder is gone"
            )
        time.sleep(0.1 + random.random() * 0.5)
    try:
        yield
    finally:
        client.delete_registered_model_tag(name, mine)


def registry_lock(client, name: str, uri: str, timeout: float = LOCK_TIMEOUT_S):
    """The lock that serialises alias moves of model ``name`` (see the module docstring)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        return _file_lock(db.with_name(f"{db.name}.{safe}.lock"), timeout)
    return _tag_lock(client, name, timeout)


def _hold() -> None:
    seconds = float(os.environ.get(HOLD_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


# ----------------------------------------------------------------------------- helpers


def _alias_version(client, name: str, alias: str) -> str | None:
    """The version number an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _aliases(client, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        raise RegistryError(
            f"no registered model {name!r} in {client.tracking_uri}; run `dirl register` first"
        ) from None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RegistryError(f"{path} not found: {what}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RegistryError(f"{path}: not valid JSON ({e}); {what}") from None


# ----------------------------------------------------------------------------- register


def weights_header(weights: Path) -> dict:
    """The weights file's header (model, input size, epoch, ...) without the tensors; WeightsError if corrupt."""
    return {k: v for k, v in read_weights(weights).items() if k != "state_dict"}


def read_train_run(run_json: Path) -> dict:
    """The train stage's ``run.json`` (run id, tracking URI, logged model id); RegistryError without a run id."""
    run = _read_json(run_json, "run `dirl train` (or `dvc repro train`) first")
    if not run.get("run_id"):
        raise RegistryError(f"{run_json}: no run_id; re-run training")
    return run


def read_scores(metrics_path: Path) -> dict:
    """The evaluation's ``scores.json``; ``{}`` (and a warning: no metric tags) when it is absent."""
    metrics = _read_json(metrics_path, "run `dirl evaluate` first") if metrics_path.is_file() else {}
    if not metrics:
        log.warning("%s absent: the version is registered without metric tags", metrics_path)
    return metrics


def check_train_run(client, run: dict, run_json: Path, uri: str) -> None:
    """TrackingError unless the training run of ``run.json`` is in the configured store ``uri``."""
    import mlflow

    try:
        client.get_run(run["run_id"])
    except mlflow.exceptions.MlflowException:
        raise TrackingError(
            f"training run {run['run_id']} (from {run_json}, tracking URI {run.get('tracking_uri')!r}) is "
            f"not in the configured store {uri}; set mlflow.tracking_uri to the store it was "
            "trained against"
        ) from None


def pipeline_evaluation(metrics_path: Path) -> dict:
    """The MLflow section of the pipeline's evaluation (``info.json`` beside ``scores.json``); ``{}`` without it."""
    info = metrics_path.with_name("info.json")
    if not info.is_file():
        return {}
    try:
        return json.loads(info.read_text()).get("mlflow") or {}
    except ValueError:
        return {}


def version_tags(
    header: dict, metrics: dict, weights: Path, shard_dirs: Sequence[str | os.PathLike], evaluation: dict
) -> dict[str, str]:
    """The new version's tags: the evaluation run, the evaluation metrics (``metric.test/IoU`` ...), the git
    commit, the DVC and shard hashes, the weights' sha256 and header, who registered it and when."""
    return {
        **({"evaluation_run_id": evaluation["evaluation_run_id"]} if evaluation.get("evaluation_run_id") else {}),
        **{f"metric.{k}": f"{v:.6g}" for k, v in flat_metrics(metrics, counts=True).items()},
        **provenance_tags(data_dirs=shard_dirs),
        "weights_sha256": sha256_file(weights),
        "model": str(header.get("model")),
        "input_size": str(header.get("input_size")),
        "epoch": str(header.get("epoch")),
        "registered_by": _who(),
        "registered_at": _now(),
    }


def model_to_register(client, run: dict, weights: Path) -> str:
    """The URI of the model the train stage logged (``run.json``) when it holds these weights; else the weights
    (trained elsewhere) are logged as the training run's model now, and that model's URI is returned."""
    import mlflow

    model_uri = _logged_model(client, run, weights)
    if model_uri is None:  # weights trained elsewhere: log them as this run's model now
        with mlflow.start_run(run_id=run["run_id"]):
            model_uri = log_pyfunc(weights, name="model").model_uri
    return model_uri


def describe_version(client, name: str, version: str, header: dict, metrics: dict) -> None:
    """The version's description: the model, its input size and the evaluated split's IoU beside the centred
    prior's (none without metrics)."""
    first = next(iter(metrics), None) if metrics else None  # the evaluated split's set comes first
    test = metrics[first] if first else {}
    if test:
        client.update_model_version(
            name,
            version,
            description=(
                f"{header.get('model')} at {header.get('input_size')} px: {first} IoU "
                f"{test['model']['IoU']:.2f} (centre prior {test['centre_prior']['IoU']:.2f})"
            ),
        )


def _logged_model(client, run: dict, weights: Path) -> str | None:
    """``models:/<model_id>`` of the model the train stage logged (``run.json``), when it holds these weights."""
    import mlflow

    model_id = run.get("model_id")
    if not model_id:
        return None
    try:
        lm = client.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException:
        return None
    if lm.tags.get("weights_sha256") not in (None, sha256_file(weights)):
        return None
    return f"models:/{model_id}"


# ----------------------------------------------------------------------------- promote / rollback


def score_version(
    cfg: Config, name: str, version: str, shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS, evalset=None
) -> dict:
    """Metrics (AP, F1, IoU, n) of registered ``name`` version ``version`` on the ``evaluate.split`` set."""
    evalset = evalset or shard_set(shard_dirs, cfg.evaluate.split, cfg.evaluate.split)
    model, info = load_model_ref(f"models:/{name}/{version}", cfg)
    model.to(default_device()).eval()
    res = evaluate_set(
        model, evalset, int(info.get("input_size") or cfg.model.input_size), cfg.evaluate.batch_size, progress=False
    )
    return {k: res["model"][k] for k in ("n", "AP", "F1", "IoU")}


def promote(
    cfg: Config,
    force: bool = False,
    reason: str = "",
    version: str | None = None,
    shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS,
    attempts: int = 3,
) -> dict:
    """Move ``@champion`` to the challenger (``register.alias``, or ``version``) if it wins (module docstring).

    Returns ``{"status": "promoted" | "unchanged", "name", "champion", "previous", "metric", "challenger_score",
    "champion_score", "margin", "forced"}``; raises :class:`PromotionRefused` when the challenger does not win.
    """
    name, metric, margin = cfg.register.model_name, cfg.promote.metric, cfg.promote.margin
    client = client_for(cfg)
    uri = tracking_uri(cfg)
    aliases = _aliases(client, name)
    if version is None:
        if cfg.register.alias not in aliases:
            listed = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise ModelRefError(
                f"model {name!r} has no alias @{cfg.register.alias} to promote (aliases: {listed}); "
                "run `dirl register` first"
            )
        version = aliases[cfg.register.alias]
    version = str(version)
    evalset = None
    cache: dict[str, dict] = {}  # version -> scores (a registered version's files never change)

    def score(v: str) -> dict:
        nonlocal evalset
        if v not in cache:
            evalset = evalset or shard_set(shard_dirs, cfg.evaluate.split, cfg.evaluate.split)
            cache[v] = score_version(cfg, name, v, evalset=evalset)
        return cache[v]

    for _ in range(attempts):
        champion = _alias_version(client, name, CHAMPION)
        if champion == version:
            return {
                "status": "unchanged",
                "name": name,
                "champion": version,
                "previous": _alias_version(client, name, PREVIOUS),
                "metric": metric,
                "forced": force,
                "message": f"version {version} is already @{CHAMPION}",
            }
        scores = {"challenger": score(version), "champion": score(champion)} if champion is not None else {}
        with registry_lock(client, name, uri):
            if _alias_version(client, name, CHAMPION) != champion:
                log.warning("@%s moved while scoring; comparing again", CHAMPION)
                continue  # compare-and-set failed: redo the comparison against the new champion
            _hold()
            result = _decide_and_move(client, name, version, champion, scores, metric, margin, force, reason)
        return result
    raise RegistryError(f"@{CHAMPION} of {name!r} kept moving during {attempts} attempts; try again")


def _decide_and_move(
    client,
    name: str,
    version: str,
    champion: str | None,
    scores: dict,
    metric: str,
    margin: float,
    force: bool,
    reason: str,
) -> dict:
    """Under the lock: check the margin, move the aliases, tag the versions."""
    chal = scores.get("challenger", {}).get(metric)
    champ = scores.get("champion", {}).get(metric)
    wins = champion is None or chal > champ + margin
    summary = (
        f"challenger v{version} {metric} {chal:.4f} vs champion v{champion} {metric} {champ:.4f} "
        f"(margin {margin}, needs > {champ + margin:.4f}, on {scores['challenger']['n']} images)"
        if champion is not None
        else f"no @{CHAMPION} yet: v{version} becomes champion"
    )
    if not wins and not force:
        raise PromotionRefused(f"not promoted: {summary}. Use --force --reason '...' to promote anyway.")
    now, who = _now(), _who()
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion)
        client.set_model_version_tag(name, champion, "demoted_at", now)
    client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "promoted_at": now,
        "promoted_by": who,
        "promote.metric": metric,
        "promote.margin": str(margin),
        "promote.summary": summary[:5000],
    }
    if champion is not None:
        tags.update(
            {
                "promote.previous_champion": champion,
                f"promote.challenger_{metric}": f"{chal:.6g}",
                f"promote.champion_{metric}": f"{champ:.6g}",
            }
        )
    if force:
        tags.update(
            {
                "promote.forced": "true",
                "promote.forced_by": who,
                "promote.forced_at": now,
                "promote.reason": reason or "(no reason given)",
                "promote.would_pass": str(wins).lower(),
            }
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("promoted %s v%s to @%s: %s", name, version, CHAMPION, summary)
    return {
        "status": "promoted",
        "name": name,
        "champion": version,
        "previous": champion,
        "metric": metric,
        "challenger_score": chal,
        "champion_score": champ,
        "margin": margin,
        "forced": bool(force),
        "would_pass": bool(wins),
        "summary": summary,
        "scores": scores,
    }


def rollback(cfg: Config) -> dict:
    """``@champion`` <- ``@previous`` and ``@previous`` <- the demoted champion (a second rollback undoes it)."""
    name = cfg.register.model_name
    client = client_for(cfg)
    with registry_lock(client, name, tracking_uri(cfg)):
        aliases = _aliases(client, name)
        champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None:
            listed = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"model {name!r} has no @{PREVIOUS} version to roll back to (aliases: {listed})")
        _hold()
        now, who = _now(), _who()
        client.set_registered_model_alias(name, CHAMPION, previous)
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion)
            client.set_model_version_tag(name, champion, "rolled_back_at", now)
            client.set_model_version_tag(name, champion, "rolled_back_by", who)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        client.set_model_version_tag(name, previous, "restored_at", now)
        client.set_model_version_tag(name, previous, "restored_by", who)
    log.info("rolled back %s: @%s v%s -> v%s", name, CHAMPION, champion, previous)
    return {"status": "rolled_back", "name": name, "champion": previous, "previous": champion}
