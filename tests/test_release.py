"""Registry lifecycle on a real MLflow SQLite store: register, promote (margin, refusal, force), rollback,
racing promotions from two processes, and the errors of model references."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from dirl.lifecycle.release import (
    CHAMPION,
    HOLD_ENV,
    PREVIOUS,
    PromotionRefused,
    RegistryError,
    promote,
    rollback,
)
from dirl.lifecycle.resolve import ModelRefError, load_model_ref
from dirl.stages import register as register_stage
from dirl.tracking import TrackingError
from dirl.weights import WeightsError
from helpers.lifecycle import make_cfg, make_training_run, make_weights, make_workspace
from helpers.paths import PARAMS, ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A workspace with shards, a SQLite store, a 'training run' and two weights files (good, flat)."""
    root = tmp_path_factory.mktemp("registry")
    dirs = make_workspace(root)
    cfg = make_cfg(root)
    train = root / "results" / "train"
    train.mkdir(parents=True)
    good = make_weights(root / "good.pt", seed=0)
    flat = make_weights(root / "flat.pt", constant=True)
    run_id = make_training_run(cfg, train)
    metrics = root / "results" / "evaluate" / "scores.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(
        json.dumps(
            {
                "test": {
                    "model": {"n": 6, "AP": 50.0, "F1": 0.5, "IoU": 40.0},
                    "centre_prior": {"n": 6, "AP": 30.0, "F1": 0.3, "IoU": 20.0},
                }
            }
        )
    )
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return {
        "root": root,
        "dirs": [str(d) for d in dirs],
        "cfg": cfg,
        "train": train,
        "good": good,
        "flat": flat,
        "run_id": run_id,
        "metrics": metrics,
        "client": client,
    }


def register(store, weights: Path, name: str | None = None) -> dict:
    cfg = make_cfg(store["root"], **({"register.model_name": name} if name else {}))
    target = store["train"] / "model.pt"
    target.unlink(missing_ok=True)
    os.link(weights, target)
    return register_stage.run(
        cfg,
        out_dir=store["root"] / "results" / "register",
        weights=target,
        run_json=store["train"] / "run.json",
        metrics_path=store["metrics"],
        shard_dirs=store["dirs"],
    )


def aliases(store, name: str = "dirl-test") -> dict:
    return {a: str(v) for a, v in store["client"].get_registered_model(name).aliases.items()}


def test_register_promote_refuse_force_rollback(store):
    client, cfg, dirs = store["client"], store["cfg"], store["dirs"]

    # register: a version, the challenger alias, tags with metrics / provenance, model.json
    info = register(store, store["flat"])
    assert info["version"] == "1" and info["alias"] == "challenger" and info["run_id"] == store["run_id"]
    assert json.loads((store["root"] / "results" / "register" / "model.json").read_text()) == info
    mv = client.get_model_version("dirl-test", "1")
    assert mv.run_id == store["run_id"] and aliases(store) == {"challenger": "1"}
    assert mv.tags["metric.test/IoU"] == "40" and mv.tags["metric.test/prior_IoU"] == "20"
    assert mv.tags["model"] == "unet" and mv.tags["input_size"] == "32" and len(mv.tags["weights_sha256"]) == 64
    assert "git_commit" in mv.tags
    assert "data.synth.dataset_hash" in mv.tags and "data.shards.dataset_hash" in mv.tags

    # no champion yet: the challenger becomes champion without a comparison
    res = promote(cfg, shard_dirs=dirs)
    assert res["status"] == "promoted" and res["champion"] == "1" and res["previous"] is None
    assert aliases(store) == {"challenger": "1", CHAMPION: "1"}

    # a better challenger that does not clear a huge margin is refused, with both numbers
    assert register(store, store["good"])["version"] == "2"
    strict = make_cfg(store["root"], **{"promote.margin": 99.0})
    with pytest.raises(PromotionRefused, match=r"challenger v2 IoU \d+\.\d+ vs champion v1 IoU 0\.0000 \(margin 99\.0"):
        promote(strict, shard_dirs=dirs)
    assert aliases(store)[CHAMPION] == "1"

    # with the configured margin 0 it wins: champion v2, previous v1, scores recorded as tags
    res = promote(cfg, shard_dirs=dirs)
    assert (res["champion"], res["previous"]) == ("2", "1") and res["challenger_score"] > res["champion_score"] == 0.0
    assert aliases(store) == {"challenger": "2", CHAMPION: "2", PREVIOUS: "1"}
    tags = client.get_model_version("dirl-test", "2").tags
    assert float(tags["promote.challenger_IoU"]) == pytest.approx(res["challenger_score"], rel=1e-5)
    assert tags["promote.champion_IoU"] == "0" and "promote.forced" not in tags

    # a worse challenger is refused; --force promotes it and records who / when / why
    assert register(store, store["flat"])["version"] == "3"
    with pytest.raises(PromotionRefused, match="not promoted: challenger v3 IoU 0.0000 vs champion v2"):
        promote(cfg, shard_dirs=dirs)
    res = promote(cfg, force=True, reason="hotfix for a customer", shard_dirs=dirs)
    assert res["forced"] and not res["would_pass"] and (res["champion"], res["previous"]) == ("3", "2")
    tags = client.get_model_version("dirl-test", "3").tags
    assert tags["promote.forced"] == "true" and tags["promote.reason"] == "hotfix for a customer"
    assert tags["promote.forced_by"] and tags["promote.forced_at"] and tags["promote.would_pass"] == "false"

    # promoting the champion again changes nothing
    assert promote(cfg, shard_dirs=dirs)["status"] == "unchanged"

    # rollback swaps champion and previous; a second rollback undoes the first
    assert rollback(cfg) == {"status": "rolled_back", "name": "dirl-test", "champion": "2", "previous": "3"}
    assert aliases(store)[CHAMPION] == "2" and aliases(store)[PREVIOUS] == "3"
    assert "rolled_back_at" in client.get_model_version("dirl-test", "3").tags
    assert rollback(cfg)["champion"] == "3" and aliases(store)[PREVIOUS] == "2"

    # the registered champion resolves to the weights that were registered
    model, minfo = load_model_ref("models:/dirl-test@champion", cfg)
    assert (minfo["version"], minfo["model"], minfo["input_size"]) == ("3", "unet", 32)
    assert float(model.head.weight.abs().sum()) == 0.0  # the flat model


RACE = """
import json, os, sys, time
from dirl.config import load_config
from dirl.lifecycle.release import promote
a = json.loads(sys.argv[1])
cfg = load_config(a["params"], overrides=a["overrides"])
while not os.path.exists(a["go"]):
    time.sleep(0.01)
r = promote(cfg, force=True, reason="race", version=a["version"], shard_dirs=a["dirs"])
print("RESULT " + json.dumps({"champion": r["champion"], "previous": r["previous"]}))
"""


def _spawn(code: str, arg: dict, env: dict) -> subprocess.Popen:
    env = {**env, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(arg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_racing_promotions_leave_aliases_consistent(store):
    """Two processes force-promote v2 and v3 at once: the lock and the re-read make them serial."""
    client, name = store["client"], "race"
    logged = store["client"].get_model_version("dirl-test", "1").source  # models:/m-... of a logged model
    for _ in range(3):
        mlflow.register_model(logged, name)
    client.set_registered_model_alias(name, CHAMPION, "1")
    go = store["root"] / "race.go"
    overrides = {
        "model.name": "unet",
        "model.input_size": 32,
        "evaluate.batch_size": 4,
        "register.model_name": name,
        "mlflow.tracking_uri": f"sqlite:///{store['root'] / 'mlflow.db'}",
    }
    env = {**os.environ, HOLD_ENV: "1.5"}
    procs = [
        _spawn(
            RACE,
            {"params": str(PARAMS), "overrides": overrides, "go": str(go), "version": v, "dirs": store["dirs"]},
            env,
        )
        for v in ("2", "3")
    ]
    time.sleep(1.0)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    final = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    first, second = sorted(results, key=lambda r: r["previous"] != "1")
    assert first["previous"] == "1"  # the first promotion demoted the original champion ...
    assert second["previous"] == first["champion"]  # ... and the second demoted the first, not v1 again
    assert final == {CHAMPION: second["champion"], PREVIOUS: first["champion"]}


LOCKER = """
import glob, json, os, sys, time
import mlflow
from dirl.lifecycle.release import registry_lock
a = json.loads(sys.argv[1])
client = mlflow.MlflowClient(a["uri"])
client.search_registered_models(max_results=1)  # connect before the barrier
spans = {}
for kind, lock_uri in a["locks"].items():
    open(a["barrier"] + kind + "." + str(os.getpid()), "w").close()  # both processes reach the lock together
    while len(glob.glob(a["barrier"] + kind + ".*")) < 2:
        time.sleep(0.005)
    with registry_lock(client, "lock-" + kind, lock_uri, timeout=60):
        t0 = time.time(); time.sleep(0.8); spans[kind] = [t0, time.time()]
print("RESULT " + json.dumps(spans))
"""


def test_registry_lock_is_exclusive_across_processes(store):
    """The file lock (SQLite store) and the tag lock (server store) both keep critical sections apart."""
    uri = f"sqlite:///{store['root'] / 'mlflow.db'}"
    locks = {"file": uri, "tag": "http://tag-lock.invalid"}  # any non-SQLite URI takes the tag lock
    for kind in locks:
        store["client"].create_registered_model(f"lock-{kind}")
    arg = {"uri": uri, "locks": locks, "barrier": str(store["root"] / "lock-barrier.")}
    procs = [_spawn(LOCKER, arg, dict(os.environ)) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    for kind in locks:
        (a0, a1), (b0, b1) = sorted(r[kind] for r in results)
        assert a1 <= b0, f"{kind} lock: critical sections overlap: {results}"
        tags = store["client"].get_registered_model(f"lock-{kind}").tags
        assert not [t for t in tags if t.startswith("dirl.lock")], tags  # released


def test_reference_errors_name_what_exists(store, tmp_path):
    cfg = store["cfg"]
    with pytest.raises(ModelRefError, match=r"has no alias 'nope'; its aliases: .*@champion -> v"):
        load_model_ref("models:/dirl-test@nope", cfg)
    with pytest.raises(ModelRefError, match=r"no registered model named 'missing'.*registered models: .*dirl-test"):
        load_model_ref("models:/missing@champion", cfg)
    with pytest.raises(ModelRefError, match="has no version 99"):
        load_model_ref("models:/dirl-test/99", cfg)
    empty = store["client"].create_run(store["client"].get_run(store["run_id"]).info.experiment_id).info.run_id
    with pytest.raises(ModelRefError, match=f"run {empty} has no logged model"):
        load_model_ref(empty, cfg)
    with pytest.raises(ModelRefError, match="neither an existing weights file"):
        load_model_ref("no/such/thing", cfg)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x04 not a zip, not a pickle")
    with pytest.raises(WeightsError, match="corrupt.pt: not a readable weights file"):
        load_model_ref(str(bad), cfg)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_model_ref(str(tmp_path / "absent.pt"), cfg)


def test_run_id_resolves_to_its_logged_model(store):
    if not store["client"].search_logged_models([store["client"].get_run(store["run_id"]).info.experiment_id]):
        register(store, store["good"], name="by-run")
    model, info = load_model_ref(store["run_id"], store["cfg"])
    assert info["run_id"] == store["run_id"] and info["model"] == "unet"


def test_rollback_without_previous_and_promote_without_challenger_fail(store):
    store["client"].create_registered_model("lonely")
    cfg = make_cfg(store["root"], **{"register.model_name": "lonely"})
    with pytest.raises(RegistryError, match="no @previous version to roll back to"):
        rollback(cfg)
    with pytest.raises(ModelRefError, match="has no alias @challenger to promote"):
        promote(cfg, shard_dirs=store["dirs"])


def test_tracking_server_down_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nothing listens there
    cfg = make_cfg(tmp_path, **{"mlflow.tracking_uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(TrackingError, match=rf"http://127\.0\.0\.1:{port} is not reachable.*mlflow server"):
        load_model_ref("models:/dirl@champion", cfg)
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}"):
        promote(cfg)
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}"):
        rollback(cfg)
