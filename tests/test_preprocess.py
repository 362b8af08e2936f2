"""Preprocessing: bad items reported, good ones stored, re-runs identical, failures leave the old output."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dirl.data.issues import IssueLog, TooManyBadItems
from dirl.data.preprocess import Item, write_shards
from dirl.data.shards import read_table, verify_shards
from helpers.paths import require_dir

SIZE = 32


def write_image(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def make_items(root: Path, n_good: int = 9) -> tuple[list[Item], dict[str, str]]:
    """Good items (``g0``..) plus one item per bad case; returns the items and {bad id: expected reason}."""
    rng = np.random.default_rng(0)
    items: list[Item] = []

    def add(name, mask, img=None, split="train", real=None, mask_ext=".png"):
        img = img if img is not None else cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (7, 7), 3)
        comp = write_image(root / "composite_images" / f"{name}.jpg", img)
        mpath = root / "masks" / f"{name}{mask_ext}"
        if mask is not None:
            write_image(mpath, mask)
        items.append(Item(id=name, subset="unit", split=split, composite=comp, mask=mpath, real=real))

    def box_mask(h=48, w=64):
        m = np.zeros((h, w), np.uint8)
        m[10:30, 20:50] = 255
        return m

    for i in range(n_good):
        real = write_image(root / "real_images" / f"g{i}.jpg", np.full((48, 64, 3), 90, np.uint8)) if i == 0 else None
        add(f"g{i}", box_mask(), split=("train", "val", "test")[i % 3], real=real)
    soft = cv2.GaussianBlur(box_mask(), (9, 9), 3)  # anti-aliased edges: non-binary but usable
    add("soft", soft)
    add("odd_real", box_mask(), real=write_image(root / "real_images" / "odd.jpg", np.zeros((20, 20, 3), np.uint8)))
    expected = {
        "mismatch": "mask is 40x64 (HxW) but the composite is 48x64",
        "missing": "file not found",
        "empty": "empty mask",
        "full": "covers the whole image",
        "corrupt": "not a readable image",
        "tiny": "vanishes once resized",
    }
    add("mismatch", box_mask(40, 64))
    add("missing", None)
    add("empty", np.zeros((48, 64), np.uint8))
    add("full", np.full((48, 64), 255, np.uint8))
    tiny = np.zeros((48, 64), np.uint8)
    tiny[5, 5] = 255  # one pixel: gone at 32 x 32
    add("tiny", tiny)
    add("corrupt", box_mask())
    (root / "composite_images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return items, expected


@pytest.fixture
def dataset(tmp_path):
    items, expected = make_items(tmp_path / "src")
    return items, expected, tmp_path / "shards"


def run(items, out, workers=1, max_bad_fraction=0.5, **kw):
    issues = IssueLog("preprocess")
    manifest = write_shards(
        items, out, SIZE, workers=workers, issues=issues, max_bad_fraction=max_bad_fraction, progress=False, **kw
    )
    return manifest, issues


def test_bad_items_reported_good_items_stored(dataset):
    items, expected, out = dataset
    manifest, issues = run(items, out)
    by_item = {i["item"]: i["reason"] for i in issues.issues}
    assert set(by_item) == set(expected)
    for name, reason in expected.items():
        assert reason in by_item[name]
        assert f"{name}." in by_item[name]  # the reason names the file
    notes = {n["item"]: n["reason"] for n in issues.notes}
    assert "non-binary" in notes["soft"] and "stored without it" in notes["odd_real"]
    table = read_table(out)
    ids = sorted(table.column("id").to_pylist())
    assert ids == sorted([f"g{i}" for i in range(9)] + ["soft", "odd_real"])
    assert manifest["rows"] == 11 and manifest["splits"] == {"test": 3, "train": 5, "val": 3}
    assert manifest["extra"]["bad"] == len(expected) and manifest["extra"]["items"] == len(items)
    assert sorted(p.name for p in out.glob("*.arrow")) == ["test-00000.arrow", "train-00000.arrow", "val-00000.arrow"]
    rows = {r["id"]: r for r in table.to_pylist()}
    g0 = rows["g0"]
    assert (g0["orig_h"], g0["orig_w"], g0["height"], g0["width"]) == (48, 64, SIZE, SIZE)
    assert g0["fg_ratio"] == pytest.approx(20 * 30 / (48 * 64))
    assert g0["real"] is not None and rows["g1"]["real"] is None and rows["odd_real"]["real"] is None
    img = cv2.imdecode(np.frombuffer(g0["image"], np.uint8), cv2.IMREAD_COLOR)
    mask = cv2.imdecode(np.frombuffer(g0["mask"], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    assert verify_shards(out) == []
    assert (out / "issues.json").is_file()


def test_rerun_gives_identical_output(dataset):
    items, _, out = dataset
    run(items, out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    run(items, out)
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first == second  # same manifest and shards, no duplicates
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".shards")] == []


def test_duplicate_ids_are_reported_once_stored(dataset):
    items, _, out = dataset
    manifest, issues = run(items + [items[1]], out)
    assert manifest["rows"] == 11 and read_table(out).column("id").to_pylist().count("g1") == 1
    assert any(i["item"] == "g1" and "duplicate id" in i["reason"] for i in issues.issues)


def test_parallel_workers_match_serial(dataset, tmp_path):
    items, _, out = dataset
    serial, _ = run(items, out, workers=1)
    parallel, issues = run(items, tmp_path / "par", workers=2)
    assert parallel == serial and len(issues) == 6


def test_too_many_bad_items_keeps_previous_output(dataset):
    items, _, out = dataset
    run(items, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TooManyBadItems, match="max_bad_fraction"):
        run(items, out, max_bad_fraction=0.1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".shards")] == []


def test_worker_exception_keeps_previous_output(dataset):
    items, _, out = dataset
    run(items[:5], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = items[:20] + [Item(id="weird", subset="unit", split="train", composite=12345, mask=items[0].mask)]
    with pytest.raises(TypeError):  # an int is neither a path nor bytes: a bug, not a bad item
        run(broken + items[20:], out, workers=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".shards")] == []


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from dirl.data.preprocess import write_shards

    def items():
        for k in range(200):
            if k == 160:  # die mid-run: <= 128 items are in flight in the workers, the rest is in finished shards
                os.kill(os.getpid(), signal.SIGKILL)
            yield {"id": f"k{k}", "subset": "unit", "split": "train", "composite": sys.argv[1], "mask": sys.argv[2]}

    if __name__ == "__main__":
        write_shards(items(), sys.argv[3], 32, workers=2, max_bad_fraction=1.0, batch_rows=4, max_shard_bytes=8_000,
                   progress=False)
""")


def processes_with_env(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment holds ``marker`` (Linux /proc; [] elsewhere)."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if (
                f"DIRL_KILL_TEST={marker}".encode() in (d / "environ").read_bytes()
                and ") Z " not in (d / "stat").read_text()
            ):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def test_killed_run_leaves_previous_output(dataset, tmp_path):
    items, _, out = dataset
    run(items, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    marker = f"dirl-kill-test-{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, str(script), str(items[0].composite), str(items[0].mask), str(out)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "DIRL_KILL_TEST": marker},
    )
    assert proc.returncode == -9, proc.stderr.decode()
    deadline = time.monotonic() + 10
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(marker) == []  # the pool workers exited with their parent
    (work,) = [p for p in out.parent.iterdir() if p.name.startswith(".shards.tmp-")]
    assert list(work.glob("train-*.arrow"))  # it was killed with finished shards in its work folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and verify_shards(out) == []
    run(items, out)  # the next run cleans the stale work folder
    assert not work.exists() and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_refuses_to_replace_a_foreign_folder(tmp_path, dataset):
    items, _, _ = dataset
    target = tmp_path / "mydata"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shard folder"):
        run(items, target)
    assert (target / "precious.txt").read_text() == "keep me"


def test_invalid_item_fields_raise(tmp_path):
    with pytest.raises(ValueError, match="split"):
        run([{"id": "a", "subset": "s", "split": "training", "composite": b"x", "mask": None}], tmp_path / "o")
    with pytest.raises(ValueError, match="composite"):
        run([{"id": "a", "subset": "s", "split": "train"}], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_real_ihd_composites(shared_data, tmp_path):
    root = require_dir(shared_data / "ihd_dev")
    items = []
    for sub in ("HCOCO", "HFlickr"):
        for p in sorted((root / sub / "composite_images").glob("*.jpg"))[:4]:
            stem, fg, _ = p.stem.rsplit("_", 2)
            real = root / sub / "real_images" / f"{stem}.jpg"
            items.append(
                Item(
                    id=p.stem,
                    subset=sub,
                    split="test",
                    composite=p,
                    mask=root / sub / "masks" / f"{stem}_{fg}.png",
                    real=real if real.exists() else None,
                )
            )
    manifest, issues = run(items, tmp_path / "ihd", max_bad_fraction=0.0)
    assert manifest["rows"] == len(items) == 8 and len(issues) == 0
    table = read_table(tmp_path / "ihd", "test", ["subset", "real", "fg_ratio"])
    reals = [r for r, s in zip(table.column("real").to_pylist(), table.column("subset").to_pylist()) if s == "HCOCO"]
    assert all(r is not None for r in reals)
    assert all(0 < f <= 0.5 for f in table.column("fg_ratio").to_pylist())  # le50 composites


# ----------------------------------------------------------------------------- test composites at original size


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 3)


def originals(root: Path) -> dict[str, Item]:
    """One JPEG composite (with its real image) per split, a PNG test composite and a tiny-foreground test one."""
    rng = np.random.default_rng(7)
    items = {}
    mask = np.zeros((60, 90), np.uint8)
    mask[10:40, 20:70] = 255
    for split in ("train", "val", "test"):
        comp = write_image(root / f"{split}.jpg", smooth_image(rng, 60, 90))
        real = write_image(root / f"{split}_real.jpg", smooth_image(rng, 60, 90))
        items[split] = Item(
            id=split,
            subset="unit",
            split=split,
            composite=comp,
            mask=write_image(root / f"{split}_mask.png", mask),
            real=real,
        )
    png = write_image(root / "png.png", smooth_image(rng, 50, 70))
    items["png"] = Item(
        id="png", subset="unit", split="test", composite=png, mask=write_image(root / "png_mask.png", mask[:50, :70])
    )
    tiny = np.zeros((1000, 800), np.uint8)
    tiny[500, 400:403] = 255  # 3 pixels: gone at any stored size of a few hundred pixels
    items["tiny"] = Item(
        id="tiny",
        subset="unit",
        split="test",
        composite=write_image(root / "tiny.jpg", smooth_image(rng, 1000, 800)),
        mask=write_image(root / "tiny_mask.png", tiny),
    )
    return items


def decode_rgb(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_test_composites_keep_original_bytes_and_size(tmp_path):
    items = originals(tmp_path / "src")
    manifest, issues = run(list(items.values()), tmp_path / "out", max_bad_fraction=0.0)
    assert len(issues) == 0 and manifest["splits"] == {"test": 3, "train": 1, "val": 1}
    assert manifest["extra"]["keep_test_originals"] is True
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    test = rows["test"]
    assert test["image"] == Path(items["test"].composite).read_bytes()  # the JPEG file itself, not re-encoded
    assert test["real"] == Path(items["test"].real).read_bytes()
    assert (test["height"], test["width"], test["orig_h"], test["orig_w"]) == (60, 90, 60, 90)
    mask = cv2.imdecode(np.frombuffer(test["mask"], np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(mask, cv2.imread(str(items["test"].mask), cv2.IMREAD_GRAYSCALE))
    png = rows["png"]  # not a JPEG: stored as a lossless PNG of the decoded image
    assert png["image"][:8] == b"\x89PNG\r\n\x1a\n" and (png["height"], png["width"]) == (50, 70)
    np.testing.assert_array_equal(decode_rgb(png["image"]), decode_rgb(Path(items["png"].composite).read_bytes()))
    assert verify_shards(tmp_path / "out") == []


def test_tiny_test_foreground_is_kept_train_rows_still_resized(tmp_path):
    items = originals(tmp_path / "src")
    run(list(items.values()), tmp_path / "out", max_bad_fraction=0.0)
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    tiny = rows["tiny"]
    assert tiny["split"] == "test" and (tiny["height"], tiny["width"]) == (1000, 800)
    assert tiny["fg_ratio"] == pytest.approx(3 / 800_000)
    assert np.count_nonzero(cv2.imdecode(np.frombuffer(tiny["mask"], np.uint8), cv2.IMREAD_GRAYSCALE)) == 3
    for split in ("train", "val"):  # train/val rows: resized to SIZE and re-encoded, as before
        r = rows[split]
        assert (r["height"], r["width"], r["orig_h"], r["orig_w"]) == (SIZE, SIZE, 60, 90)
        assert decode_rgb(r["image"]).shape == (SIZE, SIZE, 3) and decode_rgb(r["real"]).shape == (SIZE, SIZE, 3)
        assert r["image"] != Path(items[split].composite).read_bytes()


def test_keep_test_originals_off_resizes_test_rows_and_drops_a_vanished_foreground(tmp_path):
    items = originals(tmp_path / "src")
    manifest, issues = run(list(items.values()), tmp_path / "out", keep_test_originals=False)
    assert [(i["item"], "vanishes once resized" in i["reason"]) for i in issues.issues] == [("tiny", True)]
    rows = {r["id"]: r for r in read_table(tmp_path / "out").to_pylist()}
    assert (rows["test"]["height"], rows["test"]["width"]) == (SIZE, SIZE) and "tiny" not in rows
    assert manifest["extra"]["keep_test_originals"] is False


def test_synthesized_and_photo_test_rows_are_resized(tmp_path):
    items = originals(tmp_path / "src")
    t = items["test"]
    others = [
        Item(id=f"t_{src}", subset="unit", split="test", composite=t.composite, mask=t.mask, source=src)
        for src in ("synthesized", "photo")
    ]
    run(others, tmp_path / "out", max_bad_fraction=0.0)
    for r in read_table(tmp_path / "out").to_pylist():
        assert (r["height"], r["width"]) == (SIZE, SIZE), r["id"]
