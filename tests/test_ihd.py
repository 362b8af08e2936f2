"""iHarmony4 layout: scanning generated trees and the real dev sample, lists, splits, issue log."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dirl.data.ihd import (
    IHDItem,
    assign_splits,
    find_root,
    foreground_ratio,
    image_size,
    official_lists,
    read_list,
    scan,
    verify_layout,
)
from dirl.data.issues import IssueLog, TooManyBadItems
from helpers.paths import require_dir


def write_image(path: Path, img: np.ndarray, **params) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    ok, buf = cv2.imencode(path.suffix, img, flags)
    assert ok
    path.write_bytes(buf.tobytes())


def mask_with_ratio(ratio: float, h: int = 20, w: int = 20) -> np.ndarray:
    """Mask whose first round(ratio*h*w) pixels (row-major) are foreground."""
    flat = np.zeros(h * w, np.uint8)
    flat[: round(ratio * h * w)] = 255
    return flat.reshape(h, w)


def build_tree(root: Path, photos: dict[str, dict], seed: int = 0) -> None:
    """photos: '<Subset>/<image>' -> {"ratio": fg ratio, "k": composites, "real": bool, "mask": bool}."""
    rng = np.random.default_rng(seed)
    for key, spec in photos.items():
        subset, image = key.split("/")
        sub = root / subset
        if spec.get("mask", True):
            write_image(sub / "masks" / f"{image}_1.png", mask_with_ratio(spec.get("ratio", 0.2)))
        if spec.get("real", True):
            write_image(sub / "real_images" / f"{image}.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
        for k in range(1, spec.get("k", 2) + 1):
            write_image(
                sub / "composite_images" / f"{image}_1_{k}.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            )


# ---------------------------------------------------------------------------------------------- headers


def test_image_size_reads_headers(tmp_path):
    img = np.zeros((17, 29, 3), np.uint8)
    for name, params in [("a.jpg", {}), ("p.jpg", {"progressive": True}), ("m.png", {})]:
        write_image(tmp_path / name, img, **params)
        assert image_size(tmp_path / name) == (29, 17)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"<html>expired share link</html>")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:40])  # truncated before the frame header
    for name in ("empty.jpg", "junk.jpg", "cut.jpg", "absent.jpg"):
        assert image_size(tmp_path / name) is None, name


def test_foreground_ratio(tmp_path):
    write_image(tmp_path / "m.png", mask_with_ratio(0.3))
    assert foreground_ratio(tmp_path / "m.png") == pytest.approx(0.3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        foreground_ratio(tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------- scan


def test_scan_reports_missing_and_unreadable(tmp_path):
    root = tmp_path / "ihd"
    build_tree(
        root,
        {
            "HFlickr/f1": {},
            "HFlickr/f2": {"mask": False},
            "HFlickr/f3": {"real": False},
            "HCOCO/c9": {"k": 3},
        },
    )
    (root / "HFlickr" / "composite_images" / "f1_1_2.jpg").write_bytes(b"")  # 0 bytes
    (root / "HCOCO" / "masks" / "c9_1.png").write_bytes(b"\x89PNG garbage")  # shared by 3 composites
    (root / "HFlickr" / "composite_images" / "badname.jpg").write_bytes(b"")
    (root / "HFlickr" / "composite_images" / "Thumbs.db").write_bytes(b"x")
    issues = IssueLog("ingest")
    items = scan(root, issues)
    assert sorted(it.id for it in items) == ["f1_1_1", "f3_1_1", "f3_1_2"]
    reasons = {i["item"]: i["reason"] for i in issues.issues}
    assert reasons["HFlickr/composite_images/f2_1_1.jpg"] == "missing mask HFlickr/masks/f2_1.png"
    assert "unreadable" in reasons["HFlickr/composite_images/f1_1_2.jpg"]
    assert "mask HCOCO/masks/c9_1.png" in reasons["HCOCO/composite_images/c9_1_3.jpg"]
    assert "<image>_<fg>_<k>" in reasons["HFlickr/composite_images/badname.jpg"]
    assert len(issues) == 2 + 1 + 3 + 1
    assert [n["item"] for n in issues.notes] == [
        "HFlickr/composite_images/f3_1_1.jpg",
        "HFlickr/composite_images/f3_1_2.jpg",
    ]
    f3 = next(it for it in items if it.id == "f3_1_1")
    assert f3.real is None and f3.mask == root / "HFlickr" / "masks" / "f3_1.png"
    f1 = next(it for it in items if it.id == "f1_1_1")
    assert f1.real == root / "HFlickr" / "real_images" / "f1.jpg" and f1.image_id == "f1"
    assert f1.key == "HFlickr/composite_images/f1_1_1.jpg"

    report = verify_layout(root)
    assert report["subsets"]["HFlickr"] == {
        "composites": 7,
        "items": 3,
        "masks": 2,
        "real_images": 2,
        "missing_mask": 2,
        "missing_real": 2,
        "unreadable": 1,
        "bad_name": 1,
        "orphan_masks": 0,
        "extra_files": 1,
    }
    assert report["subsets"]["HCOCO"]["unreadable"] == 3
    assert report["totals"]["items"] == 3 and report["bad"] == 7 and report["ok"] is False
    assert report["missing_subsets"] == ["HAdobe5k", "Hday2night"]


def test_scan_only_named_subsets_and_empty_root(tmp_path):
    build_tree(tmp_path / "ihd", {"HFlickr/f1": {}, "HCOCO/c1": {}})
    items = scan(tmp_path / "ihd", IssueLog(), subsets=["HCOCO"])
    assert {it.subset for it in items} == {"HCOCO"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="composite_images"):
        scan(tmp_path / "empty", IssueLog())


def test_find_root_variants(tmp_path):
    nested = tmp_path / "x"
    build_tree(nested / "iHarmony4", {"HFlickr/f1": {}})
    (nested / "__MACOSX" / "iHarmony4" / "HFlickr" / "composite_images").mkdir(parents=True)
    assert find_root(nested) == nested / "iHarmony4"
    assert find_root(nested / "iHarmony4") == nested / "iHarmony4"
    assert find_root(nested / "iHarmony4" / "HFlickr") == nested / "iHarmony4"  # a subset folder itself
    two = tmp_path / "two"
    build_tree(two / "a", {"HFlickr/f1": {}})
    build_tree(two / "b", {"HCOCO/c1": {}})
    with pytest.raises(ValueError, match="several iHarmony4 roots"):
        find_root(two)
    (tmp_path / "none" / "deep").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no iHarmony4 layout"):
        find_root(tmp_path / "none")


# ---------------------------------------------------------------------------------------------- lists, splits


def test_read_list_formats(tmp_path):
    (tmp_path / "HFlickr_train.txt").write_bytes(
        b"f1_1_1.jpg\r\n\r\n# comment\ncomposite_images/f2_1_1.jpg\nf1_1_1.jpg\n"
    )
    assert read_list(tmp_path / "HFlickr_train.txt") == [
        "HFlickr/composite_images/f1_1_1.jpg",
        "HFlickr/composite_images/f2_1_1.jpg",
    ]
    (tmp_path / "mixed.txt").write_text(
        "HCOCO/composite_images/c1_5_1.jpg\niHarmony4/HAdobe5k/composite_images/"
        "a1_1_1.jpg\nd77-2012_1_1.jpg\nHFlickr/f9_1_1.jpg\n"
    )
    assert read_list(tmp_path / "mixed.txt") == [
        "HCOCO/composite_images/c1_5_1.jpg",
        "HAdobe5k/composite_images/a1_1_1.jpg",
        "Hday2night/composite_images/d77-2012_1_1.jpg",
        "HFlickr/composite_images/f9_1_1.jpg",
    ]
    (tmp_path / "bad.txt").write_text("HFlickr/composite_images/f1_1_1.jpg\nx1_1_1.jpg\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        read_list(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="train_list"):
        read_list(tmp_path / "absent.txt")


def test_splits_from_lists(tmp_path):
    root = tmp_path / "ihd"
    build_tree(root, {"HFlickr/f1": {}, "HFlickr/f2": {}, "HFlickr/f3": {}, "HCOCO/c1": {}})
    (root / "HFlickr_train.txt").write_text("f1_1_1.jpg\nf1_1_2.jpg\nf2_1_1.jpg\nf4_1_1.jpg\n")
    (root / "HFlickr_test.txt").write_text("f3_1_1.jpg\nf3_1_2.jpg\nf2_1_1.jpg\n")
    (root / "HAdobe5k_test.txt").write_text("a1_1_1.jpg\na1_1_2.jpg\n")
    train, test = official_lists(root)
    assert [p.name for p in train] == ["HFlickr_train.txt"]
    assert [p.name for p in test] == ["HAdobe5k_test.txt", "HFlickr_test.txt"]
    issues = IssueLog("split")
    items = scan(root, issues)
    out = assign_splits(items, train, test, val_fraction=0.0, issues=issues)
    split = {it.id: it.split for it in out}
    assert split == {
        "f1_1_1": "train",
        "f1_1_2": "train",
        "f2_1_1": "test",
        "f3_1_1": "test",
        "f3_1_2": "test",
    }  # f2_1_2 and HCOCO are in no list: dropped
    bad = {i["item"]: i["reason"] for i in issues.issues}
    assert bad == {
        "HFlickr/composite_images/f4_1_1.jpg": "listed in HFlickr_train.txt but not found",
        "HFlickr/composite_images/f2_1_1.jpg": "listed in both HFlickr_train.txt and HFlickr_test.txt; kept in test",
    }
    assert {
        "item": "HAdobe5k",
        "reason": "2 listed composites not used: subset HAdobe5k is not present",
    } in issues.notes
    relaxed = IssueLog()
    assign_splits(items, train, test, issues=relaxed, missing_ok=True)
    assert "f4_1_1" not in json.dumps(relaxed.issues) and "f4_1_1" in json.dumps(relaxed.notes)
    # items in no list are not dropped silently: each is named as an exclusion (a note, not a bad item)
    assert issues.excluded_items() == {
        "HFlickr/composite_images/f2_1_2.jpg",
        "HCOCO/composite_images/c1_1_1.jpg",
        "HCOCO/composite_images/c1_1_2.jpg",
    }
    assert all("not in any split list" in n["reason"] for n in issues.notes if n.get("excluded"))


def test_le50_filter_computed_from_masks(tmp_path):
    root = tmp_path / "ihd"
    build_tree(
        root,
        {
            "HFlickr/f1": {"ratio": 0.3},
            "HFlickr/f2": {"ratio": 0.7},
            "HFlickr/f3": {"ratio": 0.5},
            "HCOCO/c1": {"ratio": 0.51},
        },
    )
    items = scan(root, IssueLog())
    kept = assign_splits(items, le50=True, test_fraction=0.0, val_fraction=0.0)
    assert sorted(it.id for it in kept) == ["f1_1_1", "f1_1_2", "f3_1_1", "f3_1_2"]
    assert {it.split for it in kept} == {"train"}
    log = IssueLog()
    assign_splits(items, le50=True, test_fraction=0.0, issues=log)
    # every composite the filter drops is named with its reason, as an exclusion (a note), not as a bad item
    assert len(log) == 0 and log.excluded_items() == {
        "HFlickr/composite_images/f2_1_1.jpg",
        "HFlickr/composite_images/f2_1_2.jpg",
        "HCOCO/composite_images/c1_1_1.jpg",
        "HCOCO/composite_images/c1_1_2.jpg",
    }
    reasons = {n["item"]: n["reason"] for n in log.notes}
    assert (
        "70.0%" in reasons["HFlickr/composite_images/f2_1_1.jpg"]
        and "f2_1.png" in reasons["HFlickr/composite_images/f2_1_1.jpg"]
    )
    assert log.to_dict(8)["excluded"] == 4 and log.to_dict(8)["bad"] == 0
    assert len(assign_splits(items, le50=False, test_fraction=0.0)) == 8
    (root / "HFlickr" / "masks" / "f1_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken after the header")
    issues = IssueLog()
    kept = assign_splits(items, le50=True, test_fraction=0.0, issues=issues)
    assert sorted(it.id for it in kept) == ["f3_1_1", "f3_1_2"]
    assert {i["item"] for i in issues.issues} == {
        "HFlickr/composite_images/f1_1_1.jpg",
        "HFlickr/composite_images/f1_1_2.jpg",
    }


def fake_items(n_photos: int, per_photo: int = 3) -> list[IHDItem]:
    return [
        IHDItem(id=f"c{i}_1_{k}", subset="HCOCO", composite=Path(f"/nx/c{i}_1_{k}.jpg"), mask=Path(f"/nx/c{i}_1.png"))
        for i in range(n_photos)
        for k in range(1, per_photo + 1)
    ]


def test_computed_split_is_deterministic_grouped_and_stable():
    items = fake_items(1500)
    out = assign_splits(items, test_fraction=0.2, val_fraction=0.1, seed=7)
    assert out == assign_splits(items, test_fraction=0.2, val_fraction=0.1, seed=7)
    by_photo: dict[str, set[str]] = {}
    for it in out:
        by_photo.setdefault(it.image_id, set()).add(it.split)
    assert all(len(s) == 1 for s in by_photo.values())  # a photo's composites never straddle splits
    counts = {s: sum(1 for v in by_photo.values() if s in v) for s in ("train", "val", "test")}
    assert 0.16 < counts["test"] / 1500 < 0.24
    assert 0.06 < counts["val"] / (counts["train"] + counts["val"]) < 0.14
    grown = assign_splits(items + fake_items(1700)[len(items) :], test_fraction=0.2, val_fraction=0.1, seed=7)
    assert grown[: len(out)] == out  # adding items leaves earlier assignments alone
    other = assign_splits(items, test_fraction=0.2, val_fraction=0.1, seed=8)
    assert [it.split for it in other] != [it.split for it in out]


def test_val_from_list_train_is_about_ten_percent():
    items = fake_items(2000, per_photo=1)
    out = assign_splits(items, le50=False, val_fraction=0.1, test_fraction=0.0)
    val = sum(it.split == "val" for it in out)
    assert 150 < val < 250 and sum(it.split == "test" for it in out) == 0


# ---------------------------------------------------------------------------------------------- issue log


def test_issue_log_write_and_check(tmp_path):
    log = IssueLog("ingest", path=tmp_path / "out" / "issues.json")
    log.add("a.jpg", "missing mask")
    log.add("a.jpg", "unreadable")
    log.add("b.jpg", "unreadable", stage="scan")
    log.note("c.jpg", "no real image")
    assert len(log) == 2 and log.fraction(10) == 0.2 and IssueLog().fraction(0) == 0.0
    log.check(10, max_bad_fraction=0.2)  # at the limit: passes, and writes the file
    data = json.loads((tmp_path / "out" / "issues.json").read_text())
    assert data["stage"] == "ingest" and data["total"] == 10 and data["bad"] == 2 and data["fraction"] == 0.2
    assert data["issues"][2] == {"item": "b.jpg", "reason": "unreadable", "stage": "scan"}
    assert data["notes"] == [{"item": "c.jpg", "reason": "no real image"}]
    with pytest.raises(TooManyBadItems) as e:
        log.check(10, max_bad_fraction=0.1)
    msg = str(e.value)
    for part in ("20.00%", "10.00%", "data.max_bad_fraction", str(tmp_path / "out" / "issues.json"), "a.jpg"):
        assert part in msg
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["issues.json"]  # no temp files left
    buf = io.StringIO()
    for i in range(15):
        log.add(f"x{i}.jpg", "bad")
    log.print_summary(total=100, limit=3, file=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[ingest] 17 bad item(s) of 100 (17.00%)") and len(lines) == 5
    assert "and 14 more bad item(s)" in lines[-1]  # a.jpg's two problems are one item
    assert str(tmp_path / "out" / "issues.json") in lines[-1]
    with pytest.raises(ValueError, match="no path"):
        IssueLog().write()


def test_failed_check_writes_the_full_report_and_names_up_to_20_items(tmp_path, capsys):
    path = tmp_path / "issues.json"
    few = IssueLog("preprocess", path)
    for i in range(20):
        few.add(f"bad{i}.jpg", "unreadable")
    few.exclude("big.jpg", "mask covers 90%")
    with pytest.raises(TooManyBadItems) as e:
        few.check(40, max_bad_fraction=0.1)
    err = capsys.readouterr().err
    assert all(f"bad{i}.jpg: unreadable" in err for i in range(20)) and "more" not in err  # every one named
    assert all(f"bad{i}.jpg" in str(e.value) for i in range(20)) and str(path) in str(e.value)
    report = json.loads(path.read_text())  # written although the check failed, in full
    assert report["total"] == 40 and report["bad"] == 20 and report["excluded"] == 1 and report["passed"] is False
    assert len(report["issues"]) == 20 and "max_bad_fraction" in report["error"]
    many = IssueLog("preprocess", path)
    for i in range(25):
        many.add(f"x{i}.jpg", "unreadable")
    with pytest.raises(TooManyBadItems) as e:
        many.check(30, max_bad_fraction=0.1)
    err = capsys.readouterr().err
    assert "x19.jpg" in err and "x20.jpg" not in err and f"and 5 more bad item(s): all in {path}" in err
    assert "(+5 more)" in str(e.value)
    assert len(json.loads(path.read_text())["issues"]) == 25  # the report holds them all


# ---------------------------------------------------------------------------------------------- real sample


def test_scan_real_ihd_dev(shared_data):
    root = require_dir(shared_data / "ihd_dev")
    issues = IssueLog("ingest")
    assert find_root(root.parent) == root
    items = scan(root, issues)
    assert len(items) == 31 and len(issues) == 0
    listed = read_list(root / "dev.txt")
    assert sorted(it.key for it in items) == sorted(listed)
    assert sum(it.real is not None for it in items) == 6  # HAdobe5k and HCOCO ship their real photos
    report = verify_layout(root)
    assert report["ok"] and report["totals"]["composites"] == 31
    assert {s: r["items"] for s, r in report["subsets"].items()} == {"HAdobe5k": 2, "HCOCO": 4, "HFlickr": 25}


def test_computed_le50_agrees_with_dirl_lists_on_real_masks(shared_data):
    root, splits = require_dir(shared_data / "ihd_dev"), require_dir(shared_data / "splits")
    items = scan(root, IssueLog(), subsets=["HFlickr"])
    computed = {it.key for it in assign_splits(items, le50=True, test_fraction=0.0)}
    issues = IssueLog()
    from_lists = assign_splits(
        items, splits / "le50_train.txt", splits / "le50_test.txt", issues=issues, missing_ok=True
    )
    assert {it.key for it in from_lists} == computed  # DIRL's lists = composites with foreground <= 50 %
    assert len(computed) == 23  # f436 (65 %) and f523 (53 %) are over the limit
    assert {it.split for it in from_lists} <= {"train", "val"} and len(issues) == 0
