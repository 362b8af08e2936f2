"""The data stages end to end through the `dirl data ...` CLI, in a temporary workspace."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dirl.cli import main
from dirl.data.shards import read_manifest, read_table, verify_shards
from helpers.paths import PARAMS, ROOT


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    params = yaml.safe_load(PARAMS.read_text())
    params["data"]["stored_size"] = 96
    params["cluster"]["data_workers"] = 1
    params["synth"]["per_image"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args):
    assert main(list(args)) == 0


def test_sample_ingest_preprocess_synthesize(workspace):
    _run("data", "ingest")
    index = json.loads((workspace / "data/raw/index.json").read_text())
    assert index["kind"] == "photos"
    _run("data", "preprocess")
    shards = read_table(workspace / "data/shards")
    assert set(shards.column("source").to_pylist()) == {"photo"}
    assert set(shards.column("split").to_pylist()) == {"train", "val", "test"}
    _run("data", "synthesize")
    synth = read_table(workspace / "data/synth")
    short = json.loads((workspace / "results/synthesize/summary.json").read_text())["bad"]
    assert 2 * (shards.num_rows - short) <= synth.num_rows <= 2 * shards.num_rows
    assert set(synth.column("source").to_pylist()) == {"synthesized"}
    # composites keep the split of their photo: no photo leaks across splits
    photo_split = dict(zip(shards.column("id").to_pylist(), shards.column("split").to_pylist()))
    for cid, split in zip(synth.column("id").to_pylist(), synth.column("split").to_pylist()):
        assert photo_split[cid.rsplit("_s", 1)[0]] == split
    # splits are drawn per photo ("<photo>__<item>"): every item of a photo in one split, >= 2 photos in val and test
    photos = {}
    for pid, split in photo_split.items():
        photos.setdefault(pid.split("__")[0], set()).add(split)
    assert all(len(s) == 1 for s in photos.values())
    per_split = [sum(1 for s in photos.values() if s == {name}) for name in ("train", "val", "test")]
    assert per_split[1] >= 2 and per_split[2] >= 2 and per_split[0] > per_split[1] + per_split[2]
    assert verify_shards(workspace / "data/synth") == []
    summary = json.loads((workspace / "results/synthesize/summary.json").read_text())
    assert summary["composites"] == synth.num_rows and sum(summary["methods"].values()) == synth.num_rows
    _run("data", "show", "-n", "3")
    assert (workspace / "results/show/synth-train.png").stat().st_size > 1000
    _run("data", "verify")


def test_synthesize_is_deterministic(workspace):
    _run("data", "ingest")
    _run("data", "preprocess")
    _run("data", "synthesize")
    first = read_manifest(workspace / "data/synth")["dataset_hash"]
    _run("data", "synthesize")
    assert read_manifest(workspace / "data/synth")["dataset_hash"] == first


def test_verify_reports_corruption(workspace):
    _run("data", "ingest")
    _run("data", "preprocess")
    shard = sorted((workspace / "data/shards").glob("*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        main(["data", "verify"])
    assert e.value.code == 1


def test_photos_source_from_shared_coco128(workspace, shared_data):
    src = workspace / "photos"
    shutil.copytree(shared_data / "photos" / "coco128", src)
    # one corrupt image must be reported, not fatal
    victim = sorted((src / "images").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    _run(
        "data",
        "ingest",
        "--set",
        "data.source=photos",
        "--set",
        f"data.photos_dir={src}",
        "--set",
        "data.max_bad_fraction=0.1",
    )
    issues = json.loads((workspace / "results/ingest/issues.json").read_text())
    assert any(victim.stem in i["item"] or victim.name in i["reason"] for i in issues["issues"])
    _run("data", "preprocess", "--set", "data.source=photos", "--set", f"data.photos_dir={src}")
    assert read_manifest(workspace / "data/shards")["rows"] >= 80


def test_iharmony4_extracted_dir(workspace, shared_data):
    _run(
        "data",
        "ingest",
        "--set",
        "data.source=iharmony4",
        "--set",
        f"data.iharmony4.extracted_dir={shared_data / 'ihd_dev'}",
    )
    summary = json.loads((workspace / "results/ingest/summary.json").read_text())
    assert summary["items"] == 31
    _run(
        "data",
        "preprocess",
        "--set",
        "data.source=iharmony4",
        "--set",
        "data.iharmony4.split=computed",
        "--set",
        f"data.iharmony4.extracted_dir={shared_data / 'ihd_dev'}",
    )
    table = read_table(workspace / "data/shards")
    assert set(table.column("source").to_pylist()) == {"composite"}
    # the computed le50 filter drops the two HFlickr composites whose masks cover > 50 %
    assert "f436_1_1" not in table.column("id").to_pylist()
    assert 0 < table.num_rows <= 29


def test_verify_with_nothing_to_verify_fails(workspace, capsys):
    assert main(["data", "verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: NothingToVerify:") and "dvc repro preprocess" in err[0]


# ---------------------------------------------------------------------------------------------- killed under dvc


STAGE_SCRIPT = """
import os, pathlib, sys, time
from dirl.config import load_config
from dirl.stages import ingest
if os.environ.get("PAUSE_AT"):  # the new output is complete but not yet swapped in: a kill lands here
    real = ingest.swap_in
    def paused(new, out):
        pathlib.Path(os.environ["PAUSE_AT"]).write_text(str(new))
        time.sleep(300)
        real(new, out)
    ingest.swap_in = paused
ingest.run(load_config("params.yaml"))
"""


def _photo_folder(root: Path, n: int, seed: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[8:24, 10:30] = 255
        for sub, name, arr in (("images", f"p{i}.jpg", img), ("masks", f"p{i}.png", mask)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / name), arr)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stage_killed_under_dvc_repro_keeps_its_previous_output(tmp_path):
    """SIGKILL a real `dvc repro` while the ingest stage runs: with ``persist: true`` (dvc.yaml) DVC does not
    delete data/raw first and the stage swaps its new output in only at the end, so the previous output is still
    there, whole; the next `dvc repro` finishes the job and DVC caches and locks the output as usual."""
    import os
    import signal
    import subprocess
    import sys
    import time

    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, out in (("ingest", "data/raw"), ("preprocess", "data/shards"), ("synthesize", "data/synth")):
        assert {out: {"persist": True}} in real[stage]["outs"], f"{stage}: {out} must be persist: true"
    dvc = [sys.executable, "-m", "dvc"]
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(ROOT),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("PAUSE_AT", None)

    def run(*cmd, **kw):
        return subprocess.run(cmd, cwd=tmp_path, env=kw.pop("env", env), check=True, capture_output=True, text=True)

    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    params = yaml.safe_load(PARAMS.read_text())
    params["data"].update(source="photos", photos_dir="photos", max_bad_fraction=0.0)
    params["cluster"]["data_workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "ingest": {
                        "cmd": f"{sys.executable} stage.py",
                        "deps": ["stage.py", "photos"],
                        "params": ["data"],
                        "outs": real["ingest"]["outs"],
                    }
                }
            }
        )
    )
    _photo_folder(tmp_path / "photos", 3, seed=0)
    run(*dvc, "repro", "-q")
    first = _tree(tmp_path / "data" / "raw")
    lock1 = (tmp_path / "dvc.lock").read_text()
    assert json.loads(first["index.json"])["kind"] == "photos" and len(first) == 3 + 3 + 3  # + index/objects/items

    _photo_folder(tmp_path / "photos", 5, seed=1)  # a new version of the source
    marker = tmp_path / "paused"
    t0 = time.time()
    proc = subprocess.Popen(
        [*dvc, "repro", "-q"],
        cwd=tmp_path,
        env={**env, "PAUSE_AT": str(marker)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not marker.exists():
            assert proc.poll() is None and time.time() - t0 < 60, "the stage never reached its swap"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs, as a crash or an OOM kill would
        proc.wait()
    assert _tree(tmp_path / "data" / "raw") == first  # the previous output, whole and unchanged
    assert (tmp_path / "dvc.lock").read_text() == lock1
    assert "ingest" in run(*dvc, "status").stdout  # DVC sees the stage must run again

    run(*dvc, "repro", "-q")  # recovery: rerun; the killed run's staging folder is cleared
    second = _tree(tmp_path / "data" / "raw")
    assert second != first and len(second) == 5 + 5 + 3
    assert "up to date" in run(*dvc, "status").stdout
    outs = {o["path"]: o for o in yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["ingest"]["outs"]}
    md5 = outs["data/raw"]["md5"]
    assert (tmp_path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # cached as usual
    assert outs["data/raw"]["nfiles"] == len(second)
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".raw.")) == []


def test_photo_splits_keep_whole_photos_and_minimums():
    from dirl.data.sources import photo_splits

    photos = [f"p{i}" for i in range(13)]
    split = photo_splits(photos * 3, seed=42, test_fraction=0.2, val_fraction=0.1)
    counts = {k: sum(1 for v in split.values() if v == k) for k in ("train", "val", "test")}
    assert counts == {"train": 8, "val": 2, "test": 3}  # round(0.1 * 13) = 1 -> at least 2
    assert split == photo_splits(list(reversed(photos)), seed=42, test_fraction=0.2, val_fraction=0.1)
    assert photo_splits(photos, seed=1, test_fraction=0.2, val_fraction=0.1) != split  # the seed draws them
    small = photo_splits(["a", "b", "c"], seed=0, test_fraction=0.2, val_fraction=0.1)
    assert sorted(small.values()).count("train") >= 1  # too few photos: train keeps at least one
    big = photo_splits([f"x{i}" for i in range(1000)], seed=0, test_fraction=0.2, val_fraction=0.1)
    assert sum(1 for v in big.values() if v == "test") == 200 and sum(1 for v in big.values() if v == "val") == 100


def _ihd_extracted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small extracted iHarmony4 tree (tests/helpers/builders.ihd_archive_tree) and its two list files."""
    from helpers.builders import ihd_archive_tree

    files, lists = ihd_archive_tree(photos_per_subset=6)
    root = tmp_path / "ihd"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for split, lines in lists.items():
        (tmp_path / f"le50_{split}.txt").write_text("\n".join(lines) + "\n")
    return root, tmp_path / "le50_train.txt", tmp_path / "le50_test.txt"


def _ihd_sets(root: Path, train: Path, test: Path, *extra: str) -> list[str]:
    sets = [
        "--set",
        "data.source=iharmony4",
        "--set",
        f"data.iharmony4.extracted_dir={root}",
        "--set",
        f"data.iharmony4.train_list={train}",
        "--set",
        f"data.iharmony4.test_list={test}",
        "--set",
        "data.stored_size=64",
        "--set",
        "data.keep_aspect=true",
    ]
    for e in extra:
        sets += ["--set", e]
    return sets


def test_iharmony4_without_augmentation_synthesizes_zero_rows(workspace, capsys):
    root, train, test = _ihd_extracted(workspace)
    sets = _ihd_sets(root, train, test)
    _run("data", "ingest", *sets)
    _run("data", "preprocess", *sets)
    issues = json.loads((workspace / "results/preprocess/issues.json").read_text())
    assert "not a composite line" in json.dumps(issues)  # the malformed list line: named, skipped, not fatal
    capsys.readouterr()
    _run("data", "synthesize", *sets)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[synthesize]")]
    assert len(lines) == 1 and "0 composites" in lines[0] and "synth.augment_iharmony4" in lines[0]
    assert read_manifest(workspace / "data/synth")["rows"] == 0
    assert verify_shards(workspace / "data/synth") == []
    assert json.loads((workspace / "results/synthesize/metrics.json").read_text())["rows"] == 0
    # the rows keep their aspect: shortest side 64, the original's proportions
    for r in read_table(workspace / "data/shards", "train", ["height", "width", "orig_h", "orig_w"]).to_pylist():
        assert min(r["height"], r["width"]) == 64
        assert abs(r["width"] / r["height"] - r["orig_w"] / r["orig_h"]) < 0.05


def test_iharmony4_augmentation_reaches_the_training_split_only(workspace):
    root, train, test = _ihd_extracted(workspace)
    sets = _ihd_sets(
        root,
        train,
        test,
        "synth.augment_iharmony4=true",
        "synth.per_image=1",
        "synth.recolour=0",
        "data.val_fraction=0.3",
    )
    _run("data", "ingest", *sets)
    _run("data", "preprocess", *sets)
    shards = read_table(workspace / "data/shards", columns=["split"]).column("split").to_pylist()
    assert {"train", "val", "test"} <= set(shards)  # there were validation and test rows to protect
    _run("data", "synthesize", *sets)
    synth = read_table(workspace / "data/synth", columns=["split", "source"]).to_pylist()
    assert synth and {(r["split"], r["source"]) for r in synth} == {("train", "synthesized")}
