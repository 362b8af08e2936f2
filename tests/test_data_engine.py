"""The data engine (dirl/data/engine.py): ordered results and per-chunk errors on the local pool (fast), and
(slow) `dirl data preprocess` + `dirl data synthesize` on a real 2-worker-node Ray cluster giving the same rows,
byte for byte, and the same bad-item reports as the local engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dirl.config import config_from_dict
from dirl.data.engine import MapStats, ordered_map, resolve_engine

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = ROOT / "pipeline" / "cluster" / "local.sh"


# ----------------------------------------------------------------------------- helpers run in worker processes

_STATE: dict = {}


def _init(value: int) -> None:
    _STATE["offset"] = value


def _square(chunk: list[int], scale: int = 1) -> list[tuple[int, int, int]]:
    """(x, scale * x**2 + the initializer's offset, pid); later chunks finish first (they sleep less)."""
    time.sleep(0.02 * max(0, 6 - chunk[0] // 4))
    if chunk[0] < 0:
        raise ZeroDivisionError(f"chunk starting {chunk[0]} is a bug")
    return [(x, scale * x * x + _STATE.get("offset", 0), os.getpid()) for x in chunk]


def _chunks(n: int, k: int = 4) -> list[list[int]]:
    return [list(range(i, min(i + k, n))) for i in range(0, n, k)]


# ----------------------------------------------------------------------------- fast: local engine


def test_resolve_engine_from_config():
    def cfg(**cluster):
        return config_from_dict({"cluster": cluster})

    assert resolve_engine(None) == "local" and resolve_engine("ray") == "ray"
    assert resolve_engine(cfg()) == "local"  # auto, no address
    assert resolve_engine(cfg(address="auto")) == "ray"
    assert resolve_engine(cfg(address="10.0.0.1:6379", data_engine="local")) == "local"
    assert resolve_engine(cfg(data_engine="ray")) == "ray"  # a private local Ray
    with pytest.raises(ValueError):
        resolve_engine("spark")


@pytest.mark.parametrize("workers", [1, 2])
def test_local_ordered_map_keeps_input_order_and_runs_the_initializer(workers):
    chunks = _chunks(30)
    stats = MapStats()
    out = list(
        ordered_map(
            _square, iter(chunks), "local", args=(3,), workers=workers, initializer=_init, initargs=(1000,), stats=stats
        )
    )
    assert [c for c, _ in out] == chunks  # the chunk that was sent, with its result
    rows = [r for _, res in out for r in res]
    assert [(x, y) for x, y, _ in rows] == [(x, 3 * x * x + 1000) for x in range(30)]
    pids = {p for _, _, p in rows}
    if workers == 1:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids  # spawn workers
    assert stats.engine == "local" and stats.chunks == len(chunks) and stats.workers == workers
    _STATE.clear()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_ordered_map_reports_the_failing_chunk(workers):
    chunks = _chunks(40)
    chunks[5] = [-1, -2]  # a bug in fn for this chunk: the map ends there, with fn's own exception type
    got = []
    with pytest.raises(ZeroDivisionError) as e:
        for chunk, _ in ordered_map(_square, chunks, "local", workers=workers):
            got.append(chunk)
    assert got == chunks[:5]  # every chunk before it, in order, and nothing after
    assert "chunk starting -1" in str(e.value)
    assert any("chunk 5" in n for n in getattr(e.value, "__notes__", [])), getattr(e.value, "__notes__", None)


def test_local_ordered_map_bad_items_come_back_as_results(tmp_path):
    """A bad item is a result (problems), in its place among the good ones, not an exception."""
    import cv2

    from dirl.data.preprocess import _as_dict, _process_chunk

    img = np.full((40, 50, 3), 120, np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:30] = 255
    cv2.imwrite(str(tmp_path / "good.jpg"), img)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    items = [
        _as_dict(
            {
                "id": f"i{k}",
                "subset": "u",
                "split": "train",
                "mask": str(tmp_path / "m.png"),
                "composite": str(tmp_path / ("bad.jpg" if k in (3, 9) else "good.jpg")),
            }
        )
        for k in range(12)
    ]
    chunks = [items[i : i + 4] for i in range(0, 12, 4)]
    out = [
        (it, res)
        for chunk, results in ordered_map(_process_chunk, chunks, "local", args=(32, 90, True, True), workers=2)
        for it, res in zip(chunk, results)
    ]
    assert [it["id"] for it, _ in out] == [f"i{k}" for k in range(12)]
    bad = {it["id"]: problems for it, (row, problems, _) in out if row is None}
    assert set(bad) == {"i3", "i9"} and all("bad.jpg" in p[0] for p in bad.values())


def test_write_shards_engine_local_matches_default(tmp_path):
    """``engine=`` (a Config resolving to local) gives the same shard bytes as the default call."""
    import cv2

    from dirl.data.preprocess import write_shards
    from dirl.data.shards import read_manifest

    rng = np.random.default_rng(0)
    items = []
    for k in range(40):
        p = tmp_path / "src" / f"{k}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (48, 64, 3), np.uint8))
        m = np.zeros((48, 64), np.uint8)
        m[5 : 5 + k % 30 + 3, 8:40] = 255
        cv2.imwrite(str(tmp_path / "src" / f"{k}-m.png"), m)
        items.append(
            {
                "id": f"x{k}",
                "subset": "u",
                "split": "train",
                "composite": str(p),
                "mask": str(tmp_path / "src" / f"{k}-m.png"),
            }
        )
    a = write_shards(items, tmp_path / "a", 32, workers=1, progress=False)
    b = write_shards(items, tmp_path / "b", 32, workers=2, progress=False, engine=config_from_dict({}))
    assert a["dataset_hash"] == b["dataset_hash"] == read_manifest(tmp_path / "b")["dataset_hash"]


# ----------------------------------------------------------------------------- slow: a real multi-node cluster


def _local_sh(*args: str, state: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["DIRL_PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(LOCAL_SH), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _env_file(path: Path) -> dict[str, str]:
    return dict(
        line[len("export ") :].split("=", 1) for line in path.read_text().splitlines() if line.startswith("export ")
    )


def _dirl(ws: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "dirl.cli", *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
    )
    assert run.returncode == 0, f"dirl {' '.join(args)}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run


def _rows(folder: Path) -> dict[str, list]:
    from dirl.data.shards import read_table

    return read_table(folder).to_pydict()


def _snapshot(ws: Path, dest: Path) -> None:
    for sub in ("data/shards", "data/synth", "results/preprocess", "results/synthesize"):
        shutil.copytree(ws / sub, dest / sub)


WORKER_NODES = """
import json, os, sys, time
import ray
from ray.util.state import list_tasks
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
workers = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and not n["Resources"].get("node:__internal_head__"))
deadline, seen = time.monotonic() + 60, {}
while time.monotonic() < deadline:  # task events reach the state API a moment after the tasks end
    tasks = list_tasks(address=os.environ["RAY_API_SERVER_ADDRESS"], filters=[("state", "=", "FINISHED")],
                       limit=10000, raise_on_missing_output=False)
    seen = {}
    for t in tasks:
        if t.name.startswith("dirl-data:"):
            seen.setdefault(t.name, []).append(t.node_id)
    if len(seen) == 2:
        break
    time.sleep(1)
print(json.dumps({"workers": workers, "tasks": seen}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(sys.platform != "linux", reason="local.sh needs Linux (setsid, /proc)")
def test_ray_engine_writes_the_same_rows_as_the_local_engine(tmp_path):
    """Sample data with a corrupt image and an empty mask: preprocess + synthesize with cluster.data_engine local,
    then on a head (0 CPUs) + 2 worker nodes: identical rows (every column, bytes included), manifests, issues;
    the tasks ran on both worker nodes."""
    ws = tmp_path / "ws"
    ws.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["stored_size"] = 96
    params["synth"]["per_image"] = 2
    params["cluster"]["data_workers"] = 1
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    _dirl(ws, "data", "ingest")
    images = sorted((ws / "data/raw/photos/images").iterdir())
    corrupt, emptied = images[5], images[40]
    corrupt.unlink()  # a new file, never writing through a hard link into the source
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    mask = ws / "data/raw/photos/masks" / f"{emptied.stem}.png"
    size = __import__("cv2").imread(str(mask), 0).shape
    mask.unlink()
    __import__("cv2").imwrite(str(mask), np.zeros(size, np.uint8))

    _dirl(ws, "data", "preprocess", "--set", "cluster.data_engine=local")
    _dirl(ws, "data", "synthesize", "--set", "cluster.data_engine=local")
    local = tmp_path / "local"
    _snapshot(ws, local)
    pre_issues = json.loads((local / "results/preprocess/issues.json").read_text())
    assert {i["item"] for i in pre_issues["issues"]} == {corrupt.stem, emptied.stem}, pre_issues

    state = tmp_path / "cluster"
    try:
        out = _local_sh("start", "--workers", "2", "--cpus-per-node", "1", "--head-cpus", "0", state=state)
        assert out.returncode == 0, out.stdout + out.stderr
        env = _env_file(state / "cluster.env")
        on_ray = ["--set", "cluster.data_engine=ray", "--set", f"cluster.address={env['RAY_ADDRESS']}"]
        runs = [_dirl(ws, "data", stage, *on_ray, env=env) for stage in ("preprocess", "synthesize")]
        nodes = subprocess.run(
            [sys.executable, "-c", WORKER_NODES], env={**os.environ, **env}, capture_output=True, text=True, timeout=180
        )
        assert nodes.returncode == 0, nodes.stderr[-3000:]
        nodes = json.loads(nodes.stdout.strip().splitlines()[-1])
    finally:
        _local_sh("stop", state=state)

    # the tasks ran on both worker nodes (the head has no CPU), per the driver and per Ray's state API
    for run in runs:
        m = re.search(r"data engine ray: (\d+) tasks on (\d+) node", run.stderr)
        assert m and int(m.group(2)) == 2, run.stderr[-3000:]
    assert len(nodes["workers"]) == 2 and set(nodes["tasks"]) == {"dirl-data:_process_chunk", "dirl-data:_synth_chunk"}
    for name, ids in nodes["tasks"].items():
        assert set(ids) == set(nodes["workers"]), (name, ids, nodes["workers"])

    for sub in ("data/shards", "data/synth"):
        a, b = _rows(local / sub), _rows(ws / sub)
        assert a["id"] and a["id"] == b["id"] and a["split"] == b["split"]
        for col in a:  # every column, image / mask / real bytes included
            assert a[col] == b[col], (sub, col)
        ma, mb = (json.loads((d / sub / "manifest.json").read_text()) for d in (local, ws))
        assert ma["rows"] == mb["rows"] and ma["dataset_hash"] == mb["dataset_hash"] and ma["splits"] == mb["splits"]
        assert sorted(p.name for p in (local / sub).iterdir()) == sorted(p.name for p in (ws / sub).iterdir())
    assert (local / "data/shards/issues.json").read_text() == (ws / "data/shards/issues.json").read_text()
    for stage in ("preprocess", "synthesize"):
        assert json.loads((local / "results" / stage / "issues.json").read_text()) == json.loads(
            (ws / "results" / stage / "issues.json").read_text()
        ), stage
