"""``dirl data compare``: the statistics on tiny sets with known answers, the two set layouts, the outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dirl.data.compare import compare, ks_distance, lab, measure, prior_iou, region_stats, ring_mask, set_kind

H = W = 128
GREY, TINT = (120, 120, 120), (150, 110, 90)


def _square(side: int = 32, cy: int = 64, cx: int = 64) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = 1
    return m


def _lab_of(rgb) -> np.ndarray:
    return lab(np.array([[rgb]], np.uint8))[0, 0]


def test_centred_square_area_centre_and_lab_shift():
    m = _square(32)
    img = np.full((H, W, 3), GREY, np.uint8)
    img[m.astype(bool)] = TINT
    s = region_stats(img, m, real=np.full((H, W, 3), GREY, np.uint8))
    assert s["area"] == pytest.approx(32 * 32 / (H * W))
    assert s["cx"] == pytest.approx(0.5) and s["cy"] == pytest.approx(0.5)
    d = _lab_of(TINT) - _lab_of(GREY)
    assert (s["dL"], s["da"], s["db"]) == pytest.approx(tuple(d), abs=1e-3)
    assert s["dE"] == pytest.approx(float(np.linalg.norm(d)), abs=1e-3)
    assert s["shift"] == pytest.approx(float(np.linalg.norm(d)), abs=1e-3)  # the real image is all grey


def test_off_centre_region_and_contrast_ratio():
    m = _square(32, cy=32, cx=96)
    img = np.zeros((H, W, 3), np.uint8)
    cols = np.arange(W) % 2 == 0
    img[:, cols], img[:, ~cols] = 110, 130  # background stripes: L std = |L(130) - L(110)| / 2
    fg = m.astype(bool)
    stripes = np.where(cols[None, :].repeat(H, 0), 80, 160)
    img[fg] = stripes[fg][:, None]  # region stripes: a wider swing
    s = region_stats(img, m)
    assert (s["cx"], s["cy"]) == pytest.approx((0.75, 0.25))
    want = abs(_lab_of((160,) * 3)[0] - _lab_of((80,) * 3)[0]) / abs(_lab_of((130,) * 3)[0] - _lab_of((110,) * 3)[0])
    assert s["contrast"] == pytest.approx(want, rel=0.03)
    assert np.isnan(s["shift"])  # no real image


def test_border_and_prior_tell_an_object_from_a_band_of_sky():
    img = np.full((H, W, 3), GREY, np.uint8)
    obj = _square(48)  # a centred object, inside the frame
    sky = np.zeros((H, W), np.uint8)
    sky[:36] = 1  # the same area's order, along the top
    s_obj, s_sky = region_stats(img, obj), region_stats(img, sky)
    assert s_obj["border"] == 0.0
    assert s_sky["border"] == pytest.approx((W + 2 * 35) / (2 * W + 2 * (H - 2)))  # the top row and the sides' tops
    assert s_obj["prior"] > 0.3 > 0.05 > s_sky["prior"]  # the centred prior finds the object, not the sky
    assert prior_iou(np.ones((H, W), bool)) < prior_iou(obj.astype(bool))


def test_ring_is_around_the_region_only():
    m = _square(32)
    r = ring_mask(m)
    assert not (r & m.astype(bool)).any() and r.any()
    ys, xs = np.nonzero(r)
    pad = round(0.06 * np.sqrt(H * W))
    assert ys.min() == 64 - 16 - pad and xs.max() == 64 + 16 - 1 + pad
    assert np.isnan(region_stats(np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint8))["area"])


def test_ks_distance():
    a = np.linspace(0, 1, 50)
    assert ks_distance(a, a.copy()) == 0.0
    assert ks_distance(a, a + 2) == 1.0
    assert ks_distance(a, np.linspace(0.5, 1.5, 50)) == pytest.approx(0.5, abs=0.03)
    assert np.isnan(ks_distance(a, np.array([np.nan])))


def _write_shards(folder, rows):
    from dirl.data.shards import ShardWriter, write_manifest

    w = ShardWriter(folder, "train")
    for r in rows:
        w.write(r)
    write_manifest(folder, w.close())


def _shard_row(i: int, method: str | None, tint, side: int) -> dict:
    from dirl.data.images import encode_jpeg, encode_png

    m = _square(side)
    img = np.full((H, W, 3), GREY, np.uint8)
    img[m.astype(bool)] = tint
    real = np.full((H, W, 3), GREY, np.uint8)
    return {
        "id": f"p{i}",
        "subset": "sample",
        "split": "train",
        "image": encode_jpeg(img, 100),
        "mask": encode_png(m),
        "real": encode_jpeg(real, 100),
        "orig_h": H,
        "orig_w": W,
        "height": H,
        "width": W,
        "fg_ratio": float(m.mean()),
        "source": "synthesized" if method else "photo",
        "synth_method": method,
        "ref_id": None,
    }


def _ihd(root, n: int, side: int):
    sub = root / "HFlickr"
    for d in ("composite_images", "masks"):
        (sub / d).mkdir(parents=True)
    for i in range(n):
        m = _square(side)
        img = np.full((H, W, 3), GREY, np.uint8)
        img[m.astype(bool)] = TINT
        cv2.imwrite(str(sub / "composite_images" / f"f{i}_1_1.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(sub / "masks" / f"f{i}_1.png"), m * 255)


def test_measure_both_layouts_and_write_outputs(tmp_path):
    shards, ihd = tmp_path / "synth", tmp_path / "ihd"
    _write_shards(shards, [_shard_row(i, m, TINT, 32) for i, m in enumerate(["reinhard", "reinhard", "lut"])])
    _ihd(ihd, 2, 64)
    assert set_kind(shards) == "shards" and set_kind(ihd) == "iharmony4"
    with pytest.raises(ValueError, match="neither"):
        set_kind(tmp_path)
    s = measure(shards)
    assert s.groups == ["reinhard", "reinhard", "lut"]
    assert s.values["area"] == pytest.approx([32 * 32 / (H * W)] * 3)
    assert np.all(s.values["shift"] > 5)  # the real image is the untinted one
    i = measure(ihd)
    assert i.groups == ["HFlickr", "HFlickr"] and i.values["area"] == pytest.approx([0.25, 0.25])
    out = tmp_path / "out"
    t = compare(ihd, shards, out=out)
    assert t["stats"]["area"]["ks"] == 1.0  # 0.25 against 0.0625: disjoint
    assert t["stats"]["cx"]["ks"] == 0.0  # both centred
    assert t["groups"]["b"]["reinhard"]["n"] == 2 and t["groups"]["a"]["HFlickr"]["n"] == 2
    assert {p.name for p in out.iterdir()} == {"compare.png", "compare.md", "compare.json"}
    assert json.loads((out / "compare.json").read_text())["a"]["n"] == 2
    assert "| area |" in (out / "compare.md").read_text()


def test_cli_compare(tmp_path, params_path):
    ihd = tmp_path / "ihd"
    _ihd(ihd, 2, 48)
    out = tmp_path / "cmp"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dirl.cli",
            "data",
            "compare",
            str(ihd),
            str(ihd),
            "--out",
            str(out),
            "--params",
            str(params_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "KS distance" in p.stdout and (out / "compare.png").is_file()


def test_ihd_dev_statistics(shared_data):
    s = measure(shared_data / "ihd_dev")
    assert len(s) >= 31 and {"HFlickr", "HCOCO", "HAdobe5k"} <= set(s.groups)
    area = s.column("area")
    assert 0.1 < float(np.median(area)) < 0.4  # whole objects, often large
    assert 0.35 < float(np.median(s.column("cx"))) < 0.65
