"""The data stages end to end through the `dirl data ...` CLI, in a temporary workspace."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dirl.cli import main
from dirl.data.shards import read_manifest, read_table, verify_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["stored_size"] = 96
    params["data"]["workers"] = 1
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
    assert {"train", "test"} <= set(shards.column("split").to_pylist())
    _run("data", "synthesize")
    synth = read_table(workspace / "data/synth")
    short = json.loads((workspace / "results/synthesize/summary.json").read_text())["bad"]
    assert 2 * (shards.num_rows - short) <= synth.num_rows <= 2 * shards.num_rows
    assert set(synth.column("source").to_pylist()) == {"synthesized"}
    # composites keep the split of their photo: no photo leaks across splits
    photo_split = dict(zip(shards.column("id").to_pylist(), shards.column("split").to_pylist()))
    for cid, split in zip(synth.column("id").to_pylist(), synth.column("split").to_pylist()):
        assert photo_split[cid.rsplit("_s", 1)[0]] == split
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
    _run("data", "ingest", "--set", "data.source=photos", "--set", f"data.photos_dir={src}",
         "--set", "data.max_bad_fraction=0.1")
    issues = json.loads((workspace / "results/ingest/issues.json").read_text())
    assert any(victim.stem in i["item"] or victim.name in i["reason"] for i in issues["issues"])
    _run("data", "preprocess", "--set", "data.source=photos", "--set", f"data.photos_dir={src}")
    assert read_manifest(workspace / "data/shards")["rows"] >= 80


def test_iharmony4_extracted_dir(workspace, shared_data):
    _run("data", "ingest", "--set", "data.source=iharmony4",
         "--set", f"data.iharmony4.extracted_dir={shared_data / 'ihd_dev'}")
    summary = json.loads((workspace / "results/ingest/summary.json").read_text())
    assert summary["items"] == 31
    _run("data", "preprocess", "--set", "data.source=iharmony4", "--set", "data.iharmony4.split=computed",
         "--set", f"data.iharmony4.extracted_dir={shared_data / 'ihd_dev'}")
    table = read_table(workspace / "data/shards")
    assert set(table.column("source").to_pylist()) == {"composite"}
    # the computed le50 filter drops the two HFlickr composites whose masks cover > 50 %
    assert "f436_1_1" not in table.column("id").to_pylist()
    assert 0 < table.num_rows <= 29
