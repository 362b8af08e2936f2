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
from dirl.data.preprocess import Item, preprocess
from dirl.data.shards import read_table, verify_shards

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
        img = img if img is not None else cv2.GaussianBlur(
            rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (7, 7), 3)
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
    expected = {"mismatch": "mask is 40x64 (HxW) but the composite is 48x64", "missing": "file not found",
                "empty": "empty mask", "full": "covers the whole image", "corrupt": "not a readable image",
                "tiny": "vanishes once resized"}
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
    manifest = preprocess(items, out, SIZE, workers=workers, issues=issues, max_bad_fraction=max_bad_fraction,
                          progress=False, **kw)
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
    from dirl.data.preprocess import preprocess

    def items():
        for k in range(200):
            if k == 160:  # die mid-run: <= 128 items are in flight in the workers, the rest is in finished shards
                os.kill(os.getpid(), signal.SIGKILL)
            yield {"id": f"k{k}", "subset": "unit", "split": "train", "composite": sys.argv[1], "mask": sys.argv[2]}

    if __name__ == "__main__":
        preprocess(items(), sys.argv[3], 32, workers=2, max_bad_fraction=1.0, batch_rows=4, max_shard_bytes=8_000,
                   progress=False)
""")


def processes_with_env(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment holds ``marker`` (Linux /proc; [] elsewhere)."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if f"DIRL_KILL_TEST={marker}".encode() in (d / "environ").read_bytes() and \
                    ") Z " not in (d / "stat").read_text():
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
    proc = subprocess.run([sys.executable, str(script), str(items[0].composite), str(items[0].mask), str(out)],
                          capture_output=True, timeout=120, env={**os.environ, "DIRL_KILL_TEST": marker})
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


def shared_data() -> Path:
    return Path(os.environ.get("DIRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_real_ihd_composites(tmp_path):
    root = shared_data() / "ihd_dev"
    if not root.is_dir():
        pytest.skip(f"{root} absent (/work/shared/data absent or DIRL_SHARED_DATA unset)")
    items = []
    for sub in ("HCOCO", "HFlickr"):
        for p in sorted((root / sub / "composite_images").glob("*.jpg"))[:4]:
            stem, fg, _ = p.stem.rsplit("_", 2)
            real = root / sub / "real_images" / f"{stem}.jpg"
            items.append(Item(id=p.stem, subset=sub, split="test", composite=p,
                              mask=root / sub / "masks" / f"{stem}_{fg}.png", real=real if real.exists() else None))
    manifest, issues = run(items, tmp_path / "ihd", max_bad_fraction=0.0)
    assert manifest["rows"] == len(items) == 8 and len(issues) == 0
    table = read_table(tmp_path / "ihd", "test", ["subset", "real", "fg_ratio"])
    reals = [r for r, s in zip(table.column("real").to_pylist(), table.column("subset").to_pylist()) if s == "HCOCO"]
    assert all(r is not None for r in reals)
    assert all(0 < f <= 0.5 for f in table.column("fg_ratio").to_pylist())  # le50 composites
