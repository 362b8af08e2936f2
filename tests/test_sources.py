"""Real photo sources: photo folders, COCO polygons, and the built-in offline sample."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from dirl.data.images import decode_mask
from dirl.data.sources import PhotoItem, load_photo_folder, polygons_to_mask, sample_photos
from dirl.data.synth import Reference, make_composites


def _write_photo(path: Path, rng: np.random.Generator, size=(40, 60)) -> None:
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def _mask(size=(40, 60), scale: int = 255) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[10:25, 15:40] = scale
    return m


@pytest.fixture
def folder(tmp_path) -> Path:
    """a.jpg + 0/255 mask (category cat), b.png + 0/1 mask, c.jpg corrupt, d.jpg without mask, e.png orphan mask."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write_photo(tmp_path / "images" / "a.jpg", rng)
    _write_photo(tmp_path / "images" / "b.png", rng)
    (tmp_path / "images" / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _write_photo(tmp_path / "images" / "d.jpg", rng)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), _mask())
    cv2.imwrite(str(tmp_path / "masks" / "b.png"), _mask(scale=1))
    cv2.imwrite(str(tmp_path / "masks" / "c.png"), _mask())
    cv2.imwrite(str(tmp_path / "masks" / "e.png"), _mask())
    (tmp_path / "objects.json").write_text(json.dumps({"a": "cat", "zz": "dog"}))
    return tmp_path


def test_photo_folder_items_and_issues(folder):
    items = load_photo_folder(folder)
    assert [i.id for i in items] == ["a", "b"]
    assert [i.category for i in items] == ["cat", None]
    bad = {i["item"]: i["reason"] for i in items.issues}
    assert set(bad) == {"c", "d"}
    assert "c.jpg" in bad["c"] and "missing mask" in bad["d"]
    assert any(n["item"] == "e" for n in items.log.notes)  # orphan mask: a note, not an issue
    for item in items:
        image, mask = item.load()
        assert image.shape == (40, 60, 3) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1} and mask.sum() == 15 * 25


def test_photo_folder_without_verify_only_checks_files(folder):
    items = load_photo_folder(folder, verify=False)
    assert [i.id for i in items] == ["a", "b", "c"]  # the corrupt image is not decoded
    assert [i["item"] for i in items.issues] == ["d"]


def test_photo_folder_area_range(folder):
    assert [i.id for i in load_photo_folder(folder, area_range=(0.2, 0.5))] == []  # objects cover 15.6 %
    assert [i.id for i in load_photo_folder(folder, area_range=(0.1, 0.5))] == ["a", "b"]


def test_photo_folder_bad_root_and_json(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_photo_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no masks/ folder and no annotations.json"):
        load_photo_folder(tmp_path / "empty")
    (folder / "objects.json").write_text("{not json")
    with pytest.raises(ValueError, match="objects.json: not valid JSON"):
        load_photo_folder(folder)
    (folder / "objects.json").write_text(json.dumps({"a": 3}))
    with pytest.raises(ValueError, match="objects.json: expected a JSON object mapping"):
        load_photo_folder(folder)


def _coco(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    _write_photo(tmp_path / "images" / "p1.jpg", rng, (50, 80))
    _write_photo(tmp_path / "images" / "p2.jpg", rng, (30, 30))  # JSON claims 40x40
    square = [10, 10, 50, 10, 50, 40, 10, 40]
    doc = {
        "images": [
            {"id": 1, "file_name": "p1.jpg", "height": 50, "width": 80},
            {"id": 2, "file_name": "p2.jpg", "height": 40, "width": 40},
            {"id": 3, "file_name": "gone.jpg", "height": 40, "width": 40},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 7, "segmentation": [square], "iscrowd": 0},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 8,
                "iscrowd": 0,
                "segmentation": [[60, 5, 75, 5, 75, 15], [60, 30, 70, 45, 60, 45]],
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 7,
                "segmentation": {"counts": [1, 2], "size": [50, 80]},
                "iscrowd": 1,
            },
            {"id": 14, "image_id": 2, "category_id": 7, "segmentation": [square], "iscrowd": 0},
            {"id": 15, "image_id": 3, "category_id": 7, "segmentation": [square], "iscrowd": 0},
            {"id": 16, "image_id": 1, "category_id": 7, "segmentation": [[1, 2, 3]], "iscrowd": 0},
            {"id": 17, "image_id": 1, "category_id": 7, "segmentation": [square + [60]], "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    return tmp_path


def test_coco_polygons(tmp_path):
    root = _coco(tmp_path)
    items = load_photo_folder(root)
    assert [(i.id, i.category) for i in items] == [("p1_11", "cat"), ("p1_12", "dog")]
    m = items[0].load_mask()
    assert m.shape == (50, 80) and m[10:41, 10:51].all() and m.sum() == 41 * 31  # inclusive polygon fill
    assert items[1].load_mask()[[8, 40], [72, 62]].all()  # both polygons of the instance are filled
    bad = {i["item"]: i["reason"] for i in items.issues}
    assert set(bad) == {"p2_14", "gone_15", "p1_16", "p1_17"}
    assert "JSON says 40x40" in bad["p2_14"] and "not found" in bad["gone_15"]
    assert any(n["item"] == "p1_13" and "RLE" in n["reason"] for n in items.log.notes)
    same = load_photo_folder(root / "annotations.json")  # the JSON's own path works too
    assert [i.id for i in same] == ["p1_11", "p1_12"]
    assert [i.id for i in load_photo_folder(root, area_range=(0.2, 0.5))] == ["p1_11"]


def test_coco_malformed(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="COCO image 1 lacks file_name, height, width"):
        load_photo_folder(tmp_path)


def test_polygons_to_mask_area():
    m = polygons_to_mask([np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float)], (20, 20))
    assert m.dtype == np.uint8 and m.sum() == 100


def test_coco128_folder(shared_data):
    root = shared_data / "photos" / "coco128"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    items = load_photo_folder(root)
    assert len(items) == len(list((root / "images").glob("*.jpg"))) and not items.issues
    for item in items[:: max(1, len(items) // 8)]:
        image, mask = item.load()
        assert 0.05 <= mask.mean() <= 0.5 and image.shape[:2] == mask.shape


def test_labelme_categories(shared_data):
    root = shared_data / "photos" / "labelme"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    items = load_photo_folder(root, verify=False)
    labels = json.loads((root / "objects.json").read_text())
    assert len(items) > 1000 and all(i.category == labels.get(i.id) for i in items)
    assert sum(i.category is not None for i in items) > 0.9 * len(items)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> tuple[Path, list[PhotoItem]]:
    out = tmp_path_factory.mktemp("sample")
    real_connect = socket.socket.connect

    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos must not use the network")

    socket.socket.connect = no_network
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            items = sample_photos(out, size=128)
    finally:
        socket.socket.connect = real_connect
    SAMPLE_CONSOLE.append(console.getvalue())
    return out, items


SAMPLE_CONSOLE: list[str] = []  # what sample_photos printed in the fixture


def test_sample_photos_prints_one_count_not_a_line_per_skipped_view(sample_dir):
    lines = SAMPLE_CONSOLE[-1].splitlines()
    assert len(lines) == 1, lines  # no "skip" line per view: the views left out are one count
    assert lines[0].startswith("sample_photos: ") and "left out" in lines[0]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_photos_offline_layout(sample_dir, capsys):
    out, items = sample_dir
    assert len(items) >= 15
    assert len({i.id.split("_")[0] for i in items}) >= 6  # voc, arc2017, astronaut, coffee, rocket, ...
    cats = json.loads((out / "objects.json").read_text())
    assert cats == {i.id: i.category for i in items} and all(cats.values())
    for item in items:
        raw = cv2.imread(str(item.mask_path), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(raw)) == {0, 255}
        mask, _ = decode_mask(item.mask_path)
        image = item.load_image()
        assert max(image.shape[:2]) == 128 and image.shape[:2] == mask.shape
        assert 0.05 <= mask.mean() <= 0.5, (item.id, mask.mean())
    loaded = load_photo_folder(out)
    assert [i.id for i in loaded] == sorted(i.id for i in items) and not loaded.issues
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_sample_photos_deterministic(sample_dir, tmp_path):
    out, items = sample_dir
    (tmp_path / "images").mkdir()
    stale = tmp_path / "images" / "stale.png"
    stale.write_bytes(b"x")
    again = sample_photos(tmp_path, size=128)  # a second run, over an existing folder
    assert [i.id for i in again] == [i.id for i in items]
    assert not stale.exists()  # the folders are replaced, not merged
    assert _files(tmp_path) == _files(out)


def test_sample_items_feed_make_composites(sample_dir):
    _, items = sample_dir
    refs = [Reference(i.id, *i.load(), i.category) for i in items[:6]]
    image, mask = items[0].load()
    comps = make_composites(
        image, mask, 3, np.random.default_rng(0), refs=refs, category=items[0].category, image_id=items[0].id
    )
    assert len(comps) == 3
    assert all(c.ref_id != items[0].id for c in comps)
