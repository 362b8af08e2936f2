"""Shard format round trip, manifest, verification, writer clean-up, and the plain loader on top of it."""

import hashlib
import json
import pickle

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from dirl.data.images import encode_jpeg, encode_png
from dirl.data.loader import ShardDataset, decode_row
from dirl.data.shards import (
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    ShardWriter,
    iter_rows,
    read_manifest,
    read_table,
    verify_shards,
    write_manifest,
)


def make_row(i: int, split: str = "train", size: int = 32) -> dict:
    rng = np.random.default_rng(i)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 2)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    mask[y : y + size // 3, x : x + size // 3] = 1
    return {
        "id": f"item{i:03d}",
        "subset": "unit",
        "split": split,
        "image": encode_jpeg(img),
        "mask": encode_png(mask),
        "real": encode_jpeg(img) if i % 2 else None,
        "orig_h": 2 * size,
        "orig_w": 3 * size,
        "height": size,
        "width": size,
        "fg_ratio": float(mask.mean()),
        "source": "synthesized" if i % 3 else "composite",
        "synth_method": "reinhard" if i % 3 else None,
        "ref_id": None,
    }


def write_split_dataset(out, n_train=23, n_test=7, max_shard_bytes=20_000, batch_rows=4):
    rows = {
        "train": [make_row(i, "train") for i in range(n_train)],
        "test": [make_row(100 + i, "test") for i in range(n_test)],
    }
    infos = []
    for split, rs in rows.items():
        with ShardWriter(out, split, max_shard_bytes=max_shard_bytes, batch_rows=batch_rows) as w:
            for r in rs:
                w.write(r)
        infos += w.shards
    return rows, infos, write_manifest(out, infos, {"note": "unit"})


def same_values(a: dict, b: dict) -> bool:
    return all((a[k] == pytest.approx(b[k]) if k == "fg_ratio" else a[k] == b[k]) for k in SCHEMA.names)


def test_round_trip_rows_bytes_and_manifest(tmp_path):
    rows, infos, manifest = write_split_dataset(tmp_path)
    assert len([i for i in infos if i.file.startswith("train-")]) >= 2  # the size cap split the train rows
    assert manifest["rows"] == 30 and manifest["splits"] == {"test": 7, "train": 23}
    assert manifest["sources"] == {"composite": 10, "synthesized": 20}
    assert manifest["schema_version"] == SCHEMA_VERSION == read_manifest(tmp_path)["schema_version"]
    for s in manifest["shards"]:
        data = (tmp_path / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        assert pa.ipc.open_file(pa.BufferReader(data)).read_all().num_rows == s["rows"]
        assert pa.ipc.open_file(pa.BufferReader(data)).schema.metadata[b"dirl.schema_version"] == b"1"
    got = list(iter_rows(tmp_path))
    want = rows["test"] + rows["train"]  # shards in file-name order
    assert len(got) == len(want) and all(same_values(g, w) for g, w in zip(got, want))
    table = read_table(tmp_path, "train")
    assert table.num_rows == 23 and table.column("image").to_pylist() == [r["image"] for r in rows["train"]]
    assert read_table(tmp_path, "val").num_rows == 0
    assert read_table(tmp_path, "test", ["id", "mask"]).column_names == ["id", "mask"]
    assert [r["id"] for r in iter_rows(tmp_path, "test", ["id"])] == [r["id"] for r in rows["test"]]
    assert verify_shards(tmp_path) == []
    assert not list(tmp_path.glob("*.tmp"))


def test_dataset_hash_is_stable_and_content_based(tmp_path):
    _, _, m1 = write_split_dataset(tmp_path / "a")
    _, _, m2 = write_split_dataset(tmp_path / "b")
    assert m1 == m2 and (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    _, _, m3 = write_split_dataset(tmp_path / "c", n_test=6)
    assert m3["dataset_hash"] != m1["dataset_hash"]


def test_mixed_split_shard_is_filtered(tmp_path):
    rows = [make_row(i, split) for i, split in enumerate(["train", "val", "train", "test", "val"])]
    with ShardWriter(tmp_path, "all") as w:
        for r in rows:
            w.write(r)
    write_manifest(tmp_path, w.shards)
    assert read_table(tmp_path, "val").column("id").to_pylist() == ["item001", "item004"]
    assert [r["id"] for r in iter_rows(tmp_path, "train")] == ["item000", "item002"]


def test_verify_detects_corruption_strays_and_missing(tmp_path):
    write_split_dataset(tmp_path)
    shard = sorted(tmp_path.glob("train-*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "train-00009.arrow.tmp").write_bytes(b"partial")
    problems = verify_shards(tmp_path)
    assert any(shard.name in p and "sha256" in p for p in problems)
    assert any("train-00009.arrow.tmp" in p and "stray" in p for p in problems)
    test_shard = sorted(tmp_path.glob("test-*.arrow"))[0]
    test_shard.rename(tmp_path / "extra.arrow")
    problems = verify_shards(tmp_path)
    assert any(test_shard.name in p and "missing" in p for p in problems)
    assert any("extra.arrow" in p and "not listed" in p for p in problems)


def test_verify_detects_row_count_and_missing_manifest(tmp_path):
    write_split_dataset(tmp_path)
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["shards"][0]["rows"] += 1
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    assert any("rows" in p for p in verify_shards(tmp_path))
    (tmp_path / MANIFEST).unlink()
    assert "not found" in verify_shards(tmp_path)[0]
    with pytest.raises(FileNotFoundError, match="preprocess"):
        read_table(tmp_path)


def test_writer_removes_its_files_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "train", max_shard_bytes=12_000, batch_rows=1) as w:
            for i in range(40):
                w.write(make_row(i))
                if list(tmp_path.glob("*.arrow")) and list(tmp_path.glob("*.arrow.tmp")):
                    break
            assert list(tmp_path.glob("*.arrow")) and list(tmp_path.glob("*.arrow.tmp"))  # finished + open shard
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_rows(tmp_path):
    w = ShardWriter(tmp_path, "x")
    with pytest.raises(ValueError, match="mask"):
        w.write({**make_row(0), "mask": None})
    with pytest.raises(ValueError, match="split"):
        w.write({**make_row(0), "split": "training"})
    assert w.close() == []


# --- loader -----------------------------------------------------------------------------------------------------


def test_decode_row_shapes_and_determinism(tmp_path):
    row = make_row(5, size=48)
    out = decode_row(row, 32, train=False)
    assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (1, 32, 32) and out["id"] == "item005"
    a = decode_row(row, 32, True, np.random.default_rng(7))
    b = decode_row(row, 32, True, np.random.default_rng(7))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="rng"):
        decode_row(row, 32, train=True)


def test_shard_dataset_batches(tmp_path):
    write_split_dataset(tmp_path)
    ds = ShardDataset(tmp_path, "train", 24, train=True, seed=3)
    assert len(ds) == 23
    jittered = ShardDataset(tmp_path, "train", 24, train=True, seed=3, jitter=0.2)  # train.jitter
    plain, changed = ds[4], jittered[4]
    assert np.array_equal(plain["mask"], changed["mask"]) and not np.array_equal(plain["image"], changed["image"])
    batches = list(ds.iter_batches(8, shuffle=True))
    assert [len(b["id"]) for b in batches] == [8, 8, 7]
    b = batches[0]
    assert b["image"].shape == (8, 3, 24, 24) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (8, 1, 24, 24) and b["mask"].dtype == torch.float32
    assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
    assert sorted(i for b in batches for i in b["id"]) == [f"item{i:03d}" for i in range(23)]
    assert [len(b["id"]) for b in ds.iter_batches(8, drop_last=True)] == [8, 8]
    again = next(ds.iter_batches(8, shuffle=True))
    assert again["id"] == b["id"] and torch.equal(again["image"], b["image"])  # same (seed, epoch)
    ds.set_epoch(1)
    assert next(ds.iter_batches(8, shuffle=True))["id"] != b["id"]
    evals = ShardDataset(tmp_path, "test", 24, train=False)
    assert torch.equal(next(evals.iter_batches(4))["image"], next(evals.iter_batches(4))["image"])


def test_shard_dataset_with_torch_dataloader_and_pickle(tmp_path):
    write_split_dataset(tmp_path)
    ds = ShardDataset(tmp_path, "test", 16, train=True, seed=1)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 2_000  # the memory-mapped table is not pickled
    assert np.array_equal(clone[3]["image"], ds[3]["image"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["mask"].shape == (4, 1, 16, 16)
    assert batch["id"] == [f"item{100 + i:03d}" for i in range(4)]
    with pytest.raises(IndexError):
        ds[len(ds)]


# --- check_shards: the fast pre-flight check before training --------------------------------------------------


def _toy(tmp_path):
    from dirl.data.toy import toy_shards

    return toy_shards(tmp_path / "toy", n_train=16, n_val=4, size=32)


def _one_line_naming(err, path) -> str:
    msg = str(err)
    assert path.name in msg and "run `dirl data verify`" in msg and "\n" not in msg, msg
    return msg


def test_check_shards_passes_good_shards(tmp_path):
    from dirl.data.shards import check_shards

    toy = _toy(tmp_path)
    assert check_shards([toy]) is None and check_shards(toy) is None


def test_check_shards_names_a_corrupt_shard(tmp_path):
    from dirl.data.shards import ShardError, check_shards

    toy = _toy(tmp_path)
    shard = sorted(toy.glob("train-*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte: same size, same rows
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError) as e:
        check_shards([toy])
    assert "sha256" in _one_line_naming(e.value, shard)
    assert isinstance(e.value, ValueError)


def test_check_shards_names_a_missing_and_a_truncated_shard(tmp_path):
    from dirl.data.shards import ShardError, check_shards

    toy = _toy(tmp_path)
    shard = sorted(toy.glob("val-*.arrow"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError) as e:
        check_shards([toy])
    assert "bytes, manifest says" in _one_line_naming(e.value, shard)
    shard.unlink()
    with pytest.raises(ShardError) as e:
        check_shards([toy])
    assert "missing" in _one_line_naming(e.value, shard)
    (toy / MANIFEST).unlink()
    with pytest.raises(ShardError, match="manifest.json not found"):
        check_shards([toy])


def test_check_shards_skips_the_hash_above_the_size_limit(tmp_path, monkeypatch):
    import dirl.data.shards as shards_mod

    toy = _toy(tmp_path)
    shard = sorted(toy.glob("train-*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    image = next(iter_rows(toy, "train", ["image"]))["image"]
    data[data.find(image) + len(image) // 2] ^= 0x01  # inside a JPEG payload: Arrow's structure is intact
    shard.write_bytes(bytes(data))
    with pytest.raises(shards_mod.ShardError, match="sha256"):
        shards_mod.check_shards([toy])
    monkeypatch.setattr(shards_mod, "HASH_BELOW_BYTES", 0)  # "the data is too big to hash in seconds"
    shards_mod.check_shards([toy])  # size, rows and schema agree: only the hash would see it
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(shards_mod.ShardError, match=shard.name):
        shards_mod.check_shards([toy])


def test_train_on_a_corrupt_shard_fails_fast_without_starting_ray(tmp_path):
    import ray

    from dirl.config import config_from_dict
    from dirl.data.shards import ShardError
    from dirl.stages.train import run as train

    toy = _toy(tmp_path)
    shard = sorted(toy.glob("train-*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    cfg = config_from_dict(
        {
            "cluster": {"storage_path": str(tmp_path / "ray_results")},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
    assert not ray.is_initialized()
    with pytest.raises(ShardError) as e:
        train(cfg, out_dir=tmp_path / "out", data_dirs=[toy], root=tmp_path)
    _one_line_naming(e.value, shard)
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "out").exists()


def test_check_shards_names_a_malformed_manifest(tmp_path):
    from dirl.data.shards import ShardError, check_shards

    toy = _toy(tmp_path)
    m = json.loads((toy / MANIFEST).read_text())
    del m["shards"][0]["sha256"]
    (toy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"manifest\.json: malformed shard list"):
        check_shards([toy])
    (toy / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match=r"manifest\.json is not valid JSON.*dirl data verify"):
        check_shards([toy])
