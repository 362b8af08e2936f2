"""Composite synthesis: background untouched, foreground changed, statistics matched, reproducible, filtered."""

from __future__ import annotations

import logging
from collections import Counter

import cv2
import numpy as np
import pytest
from skimage import data

from dirl.data import synth
from dirl.data.compare import edge_share
from dirl.data.synth import (
    METHODS,
    Composite,
    Reference,
    apply_lut,
    make_composites,
    pick_reference,
    quality_check,
    random_lut,
    recolour_region,
    synthesize_with_params,
)

SIZE = 128


def _photo(img: np.ndarray, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A bundled real photo at SIZE x SIZE with an elliptic object mask (~25 %)."""
    img = np.ascontiguousarray(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(
        m, (int(centre[0] * SIZE), int(centre[1] * SIZE)), (int(0.3 * SIZE), int(0.27 * SIZE)), 0, 0, 360, 1, -1
    )
    return img, m


@pytest.fixture(scope="module")
def photos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "coffee": _photo(data.coffee(), (0.5, 0.35)),
        "chelsea": _photo(data.chelsea(), (0.5, 0.5)),
        "astronaut": _photo(data.astronaut(), (0.4, 0.6)),
    }


def _fg_change(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    return float(np.abs(a[m.astype(bool)].astype(int) - b[m.astype(bool)].astype(int)).mean())


def _ycc_ks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel Kolmogorov-Smirnov distance between two (N, 3) RGB pixel sets, in YCrCb."""
    ya = cv2.cvtColor(a.reshape(-1, 1, 3), cv2.COLOR_RGB2YCrCb).reshape(-1, 3)
    yb = cv2.cvtColor(b.reshape(-1, 1, 3), cv2.COLOR_RGB2YCrCb).reshape(-1, 3)
    return np.array([np.abs(synth._cdf(ya[:, c]) - synth._cdf(yb[:, c])).max() for c in range(3)])


@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "random-stats"])
@pytest.mark.parametrize("method", METHODS)
def test_background_identical_and_foreground_changed(photos, method, with_ref):
    image, mask = photos["coffee"]
    ref, ref_mask = photos["chelsea"] if with_ref else (None, None)
    before = image.copy()
    out = recolour_region(image, mask, method, np.random.default_rng(3), ref, ref_mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before), "the input image must not be modified"
    bg = mask == 0
    assert np.array_equal(out[bg], image[bg]), "background bytes changed"
    assert _fg_change(image, out, mask) >= 3.0


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_bytes_different_seed_differs(photos, method):
    image, mask = photos["astronaut"]
    a = recolour_region(image, mask, method, np.random.default_rng(7))
    b = recolour_region(image, mask, method, np.random.default_rng(7))
    c = recolour_region(image, mask, method, np.random.default_rng(8))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_reference_methods_depend_only_on_the_reference_except_idt(photos):
    """reinhard / xiao / fecker are deterministic functions of (image, reference); idt's rotations are random."""
    (image, mask), (ref, ref_mask) = photos["coffee"], photos["chelsea"]
    for method in ("reinhard", "xiao", "fecker"):
        a = recolour_region(image, mask, method, np.random.default_rng(1), ref, ref_mask)
        b = recolour_region(image, mask, method, np.random.default_rng(2), ref, ref_mask)
        assert np.array_equal(a, b), method
    a = recolour_region(image, mask, "idt", np.random.default_rng(1), ref, ref_mask)
    b = recolour_region(image, mask, "idt", np.random.default_rng(2), ref, ref_mask)
    assert not np.array_equal(a, b)


def test_reinhard_matches_lab_mean_and_std(photos):
    (image, mask), (ref, ref_mask) = photos["coffee"], photos["chelsea"]
    out = recolour_region(image, mask, "reinhard", np.random.default_rng(0), ref, ref_mask)
    lab_out = synth._rgb_to_lab(out[mask.astype(bool)])
    lab_ref = synth._rgb_to_lab(ref[ref_mask.astype(bool)])
    lab_src = synth._rgb_to_lab(image[mask.astype(bool)])
    sd_ref = lab_ref.std(axis=0)
    assert np.all(np.abs(lab_out.mean(axis=0) - lab_ref.mean(axis=0)) < 0.05 * sd_ref)
    assert np.allclose(lab_out.std(axis=0) / sd_ref, 1.0, atol=0.05)
    assert np.any(np.abs(lab_src.mean(axis=0) - lab_ref.mean(axis=0)) > 0.5 * sd_ref)  # it had to move


def test_xiao_matches_rgb_mean_and_covariance(photos):
    (image, mask), (ref, ref_mask) = photos["coffee"], photos["chelsea"]
    out = recolour_region(image, mask, "xiao", np.random.default_rng(0), ref, ref_mask)
    o, r, s = (x.astype(np.float64) for x in (out[mask == 1], ref[ref_mask == 1], image[mask == 1]))
    cov_r = np.cov(r, rowvar=False)
    rel = np.linalg.norm(np.cov(o, rowvar=False) - cov_r) / np.linalg.norm(cov_r)
    assert rel < 0.05
    assert np.linalg.norm(np.cov(s, rowvar=False) - cov_r) / np.linalg.norm(cov_r) > 1.0
    assert np.all(np.abs(o.mean(axis=0) - r.mean(axis=0)) < 1.0)


def test_fecker_matches_ycbcr_histograms(photos):
    (image, mask), (ref, ref_mask) = photos["coffee"], photos["chelsea"]
    out = recolour_region(image, mask, "fecker", np.random.default_rng(0), ref, ref_mask)
    ks_out = _ycc_ks(out[mask == 1], ref[ref_mask == 1])
    ks_src = _ycc_ks(image[mask == 1], ref[ref_mask == 1])
    assert np.all(ks_out < 0.08), ks_out
    assert np.all(ks_src > 0.3), ks_src


def test_idt_moves_the_distribution_to_the_reference(photos):
    (image, mask), (ref, ref_mask) = photos["coffee"], photos["chelsea"]
    out = recolour_region(image, mask, "idt", np.random.default_rng(0), ref, ref_mask)
    o, r, s = out[mask == 1], ref[ref_mask == 1], image[mask == 1]
    ks = np.array([np.abs(synth._cdf(o[:, c]) - synth._cdf(r[:, c])).max() for c in range(3)])
    ks_src = np.array([np.abs(synth._cdf(s[:, c]) - synth._cdf(r[:, c])).max() for c in range(3)])
    assert np.all(ks < 0.15) and np.all(ks < 0.5 * ks_src), (ks, ks_src)


def test_apply_lut_is_trilinear():
    """Trilinear interpolation reproduces any affine colour map exactly (up to OpenCV's 1/32-cell weights)."""
    g = np.linspace(0.0, 1.0, 17)
    r, gg, b = np.meshgrid(g, g, g, indexing="ij")
    grid = np.stack([r, gg, b], axis=-1)
    a = np.array([[0.5, 0.3, 0.0], [0.0, 0.2, 0.6], [-0.4, 0.0, 0.9]])
    lut = (grid @ a.T + np.array([0.1, 0.05, 0.3])).astype(np.float32)
    px = np.random.default_rng(0).integers(0, 256, (40000, 3)).astype(np.uint8)  # > 32767 look-ups
    expected = np.clip(np.rint(255.0 * ((px / 255.0) @ a.T + [0.1, 0.05, 0.3])), 0, 255)
    assert np.abs(apply_lut(px, lut).astype(int) - expected).max() <= 1
    identity = apply_lut(px, grid.astype(np.float32))
    assert np.abs(identity.astype(int) - px).max() <= 1


def test_random_lut_is_valid_and_varied():
    lut1, params = random_lut(np.random.default_rng(0))
    lut2, _ = random_lut(np.random.default_rng(1))
    assert lut1.shape == (17, 17, 17, 3) and lut1.min() >= 0.0 and lut1.max() <= 1.0
    assert abs(sum(params["weights"]) - 1.0) < 1e-9 and params["curves"] in (2, 3)
    assert np.abs(lut1 - lut2).mean() > 0.01
    dark, bright = lut1[0, 0, 0].mean(), lut1[-1, -1, -1].mean()
    assert bright > dark + 0.3  # tone curves are increasing: black stays darker than white


def test_quality_check_rejects_degenerate(photos):
    image, mask = photos["coffee"]
    m = mask.astype(bool)
    ok, reason = quality_check(image, image.copy(), mask)
    assert not ok and "too little change" in reason
    tiny = image.copy()
    tiny[m] = np.minimum(image[m].astype(int) + 1, 255).astype(np.uint8)
    assert not quality_check(image, tiny, mask)[0]
    clipped = image.copy()
    clipped[m] = 255
    ok, reason = quality_check(image, clipped, mask)
    assert not ok and "clipped" in reason
    moved_bg = recolour_region(image, mask, "lut", np.random.default_rng(0))
    moved_bg[~m] = 255 - moved_bg[~m]
    assert quality_check(image, moved_bg, mask) == (False, "background changed")
    good = recolour_region(image, mask, "lut", np.random.default_rng(0))
    assert quality_check(image, good, mask) == (True, "ok")


def test_bad_inputs_are_named():
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    with pytest.raises(ValueError, match="unknown synthesis method"):
        recolour_region(image, mask, "sepia", np.random.default_rng(0))
    with pytest.raises(ValueError, match="divide a 0/255 mask"):
        recolour_region(image, mask * 255, "lut", np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask is empty"):
        recolour_region(image, np.zeros_like(mask), "lut", np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        recolour_region(image.astype(np.float32), mask, "lut", np.random.default_rng(0))
    with pytest.raises(ValueError, match="both ref_image and ref_mask"):
        recolour_region(image, mask, "reinhard", np.random.default_rng(0), ref_image=image)


def test_pick_reference_prefers_same_category():
    refs = [
        Reference(f"r{i}", np.zeros((1, 1, 3), np.uint8), np.ones((1, 1), np.uint8), c)
        for i, c in enumerate(["cat", "dog", "cat", None])
    ]
    rng = np.random.default_rng(0)
    picks = {pick_reference(refs, "cat", rng).id for _ in range(50)}
    assert picks == {"r0", "r2"}
    assert len({pick_reference(refs, "horse", rng).id for _ in range(100)}) == 4  # no match: any
    assert len({pick_reference(refs, None, rng).id for _ in range(100)}) == 4
    assert pick_reference([], "cat", rng) is None


def _refs(photos) -> list[Reference]:
    return [
        Reference("coffee", *photos["coffee"], "cup"),
        Reference("chelsea", *photos["chelsea"], "cat"),
        Reference("astronaut", *photos["astronaut"], "person"),
    ]


def test_make_composites_count_provenance_determinism(photos):
    image, mask = photos["chelsea"]
    refs = _refs(photos)
    kw = dict(methods=METHODS, refs=refs, category="cup", image_id="chelsea")
    comps = make_composites(image, mask, 8, np.random.default_rng(5), **kw)
    again = make_composites(image, mask, 8, np.random.default_rng(5), **kw)
    assert len(comps) == 8 and all(isinstance(c, Composite) for c in comps)
    assert [c.image.tobytes() for c in comps] == [c.image.tobytes() for c in again]
    assert [c.params for c in comps] == [c.params for c in again]
    for c in comps:
        assert c.method in METHODS
        assert quality_check(image, c.image, mask)[0]
        if c.method in synth.TRANSFER_METHODS:
            assert c.ref_id == "coffee"  # same category preferred; the image itself is excluded
            ref = next(r for r in refs if r.id == c.ref_id)
            rebuilt = recolour_region(
                image, mask, c.method, np.random.default_rng(c.params["seed"]), ref.image, ref.mask
            )
        else:
            assert c.ref_id is None
            rebuilt = recolour_region(image, mask, c.method, np.random.default_rng(c.params["seed"]))
        assert np.array_equal(rebuilt, c.image)
    other = make_composites(image, mask, 8, np.random.default_rng(6), **kw)
    assert [c.image.tobytes() for c in comps] != [c.image.tobytes() for c in other]


def test_make_composites_reports_shortfall(photos, caplog):
    image, mask = photos["coffee"]
    with caplog.at_level(logging.INFO, logger="dirl.data.synth"):
        comps = make_composites(
            image, mask, 3, np.random.default_rng(0), methods=["lut"], max_tries=2, min_change=300.0, image_id="coffee"
        )
    assert comps == []
    assert "0 of 3 composites after 6 tries" in caplog.text and "too little change" in caplog.text


def test_synthesize_with_params_is_json_ready(photos):
    import json

    image, mask = photos["astronaut"]
    for method in METHODS:
        _, params = synthesize_with_params(image, mask, method, np.random.default_rng(0))
        json.dumps(params)


def test_free_form_masks_are_one_blob_of_the_asked_area_anywhere():
    from dirl.data.synth import free_form_mask

    centres, areas = [], []
    for seed in range(60):
        m = free_form_mask(96, 128, np.random.default_rng(seed), area=(0.05, 0.4))
        assert m.shape == (96, 128) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert cv2.connectedComponents(m)[0] == 2  # background + one blob
        areas.append(m.mean())
        ys, xs = np.nonzero(m)
        centres.append((ys.mean() / 96, xs.mean() / 128))
    assert 0.02 <= min(areas) and max(areas) <= 0.45
    cy, cx = np.array(centres).T
    assert cy.min() < 0.35 and cy.max() > 0.65 and cx.min() < 0.35 and cx.max() > 0.65  # not only centred
    assert np.array_equal(
        free_form_mask(64, 64, np.random.default_rng(3)), free_form_mask(64, 64, np.random.default_rng(3))
    )


def test_recolour_changes_the_whole_photo_consistently(photos):
    from dirl.data.synth import recolour_image

    image = photos["coffee"][0]
    out = recolour_image(image, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).mean() > 3  # a visible change ...
    # ... that is one colour mapping: equal input colours map to equal output colours everywhere
    flat_in, flat_out = image.reshape(-1, 3), out.reshape(-1, 3)
    _, first, inverse = np.unique(flat_in, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(flat_out, flat_out[first][inverse.ravel()])


# ----------------------------------------------------------------------------- the iharmony4-like recipe


def test_retouch_is_a_global_edit_of_the_region(photos):
    img, m = photos["chelsea"]
    out, params = synthesize_with_params(img, m, "retouch", np.random.default_rng(3))
    fg = m.astype(bool)
    assert np.array_equal(out[~fg], img[~fg]) and not np.array_equal(out[fg], img[fg])
    assert set(params) == {"ev", "temperature", "tint", "contrast", "saturation"}
    assert "retouch" not in METHODS  # not drawn by the mixed recipe's default methods


def test_category_key():
    assert [synth.category_key(c) for c in ("carLeft", "car side az180deg", "trees", "snowy mountain", "sky")] == [
        "car",
        "car",
        "tree",
        "mountain",
        "sky",
    ]
    assert synth.category_key(None) is None


def test_target_crop_matches_area_and_centre():
    m = np.zeros((256, 256), np.uint8)
    cv2.ellipse(m, (70, 180), (30, 22), 0, 0, 360, 1, -1)  # ~3 % of the frame, low left
    rng = np.random.default_rng(0)
    got = []
    for _ in range(60):
        window = synth.target_crop(m, rng)
        img, region = synth.apply_crop(np.zeros((256, 256, 3), np.uint8), m, window)
        ys, xs = np.nonzero(region)
        got.append((region.mean(), xs.mean() / 256, ys.mean() / 256))
    area, cx, cy = np.median(np.array(got), axis=0)
    assert 0.12 < area < 0.32  # target median 0.22; the full frame gives 0.03
    assert 0.4 < cx < 0.6 and 0.42 < cy < 0.62  # target centre (0.5, 0.52); the full frame gives (0.27, 0.70)
    assert all(0.03 <= a <= 0.5 for a, _, _ in got)


def test_target_crop_keeps_the_region_off_the_frame_edge():
    sky = np.zeros((256, 256), np.uint8)
    sky[:70] = 1  # a band along the top: every crop that holds some of it has it on its edge
    car = np.zeros((256, 256), np.uint8)
    cv2.ellipse(car, (200, 60), (40, 30), 0, 0, 360, 1, -1)  # an object inside the frame, up right
    strict = synth.Imitation(max_border=0.05, max_zoom=4.0)
    assert synth.fits_frame(car, synth.Imitation())  # max_border 1: any region fits
    assert synth.fits_frame(sky, synth.Imitation()) and not synth.fits_frame(sky, strict)
    assert synth.target_crop(sky, np.random.default_rng(0), max_border=0.05) is None
    assert synth.fits_frame(car, strict)
    rng = np.random.default_rng(1)
    for _ in range(20):
        window = synth.target_crop(car, rng, max_zoom=4.0, max_border=0.05)
        assert window is not None
        _, region = synth.apply_crop(np.zeros((256, 256, 3), np.uint8), car, window)
        assert edge_share(region) <= 0.06  # the bound, measured after the crop's resize
    # without the bound the same draws may put the region on the edge: the bound is what holds it inside
    loose = [synth.target_crop(car, np.random.default_rng(k), max_zoom=4.0) for k in range(20)]
    assert any(edge_share(synth.apply_crop(np.zeros((256, 256, 3), np.uint8), car, w)[1]) > 0.06 for w in loose)


def test_imitation_with_max_border_keeps_regions_inside_the_frame(photos):
    img, m = photos["chelsea"]
    opts = synth.Imitation(max_border=0.05, max_zoom=4.0, retouch_share=1.0)
    if not synth.fits_frame(m, opts):
        pytest.skip("the photo's region touches the frame at every crop")
    made = synth.imitate_iharmony4(img, m, 3, np.random.default_rng(0), opts=opts)
    assert made and all(edge_share(region) <= 0.06 for _, region, _ in made)


def test_realism_filter_rejects_invisible_and_extreme_shifts(photos):
    img, m = photos["chelsea"]
    fg = m.astype(bool)
    faint = img.copy()
    faint[fg] = np.clip(img[fg].astype(int) + 2, 0, 255).astype(np.uint8)
    ok, reason = synth.realism_check(img, faint, m)
    assert not ok and reason.startswith("invisible")
    extreme = img.copy()
    extreme[fg] = (255, 0, 255)
    ok, reason = synth.realism_check(img, extreme, m)
    assert not ok and reason.startswith("implausible")
    moderate = img.copy()
    moderate[fg] = np.clip(img[fg].astype(int) * [1.15, 1.0, 0.85], 0, 255).astype(np.uint8)
    assert synth.realism_check(img, moderate, m) == (True, "ok")


@pytest.mark.parametrize("method", synth.TRANSFER_METHODS)
def test_predicted_shift_is_the_transfers_shift(photos, method):
    """A colour transfer moves the region's mean Lab colour onto the reference's: the realism filter's shift is
    known before the transfer is made."""
    for name, other in (("coffee", "chelsea"), ("chelsea", "astronaut"), ("astronaut", "coffee")):
        img, m = photos[name]
        ref = Reference(other, *photos[other])
        comp, _ = synthesize_with_params(img, m, method, np.random.default_rng(0), ref.image, ref.mask)
        fg = m.astype(bool)
        actual = float(np.linalg.norm(synth.lab(comp)[fg].mean(axis=0) - synth.lab(img)[fg].mean(axis=0)))
        predicted = synth.predicted_shift(img, m, ref)
        assert actual > 3 and abs(predicted - actual) <= 0.25 * actual, (name, other, predicted, actual)
        assert predicted - actual < synth.SHIFT_SLACK  # what the filter's early rejection relies on


def test_a_transfer_that_cannot_pass_the_realism_filter_is_not_made(photos, monkeypatch):
    img, m = photos["coffee"]
    far = np.zeros_like(img)
    far[...] = (255, 0, 255)  # magenta: Delta E ~ 100 from any photo's region
    refs = [Reference("magenta", far, np.ones_like(m), "cat")]
    made_transfers = []
    real_transfer = synth._transfer
    monkeypatch.setattr(synth, "_transfer", lambda *a, **k: made_transfers.append(a[2]) or real_transfer(*a, **k))
    opts = synth.Imitation(retouch_share=0.0, methods=("reinhard",))
    rejected: Counter = Counter()
    assert (
        synth._checked_composite(img, m, "reinhard", np.random.default_rng(0), refs, None, opts, 3.0, 0.2, rejected)
        is None
    )
    assert rejected == Counter({"reinhard: implausible": 1}) and made_transfers == []
    near = [Reference("chelsea", *photos["chelsea"], "cat")]  # within the filter's reach: made, then checked
    synth._checked_composite(img, m, "reinhard", np.random.default_rng(0), near, None, opts, 3.0, 0.2, rejected)
    assert made_transfers == ["reinhard"]


def test_imitate_iharmony4_composites(photos, caplog):
    img, m = photos["coffee"]
    refs = [Reference("chelsea", *photos["chelsea"], "cat"), Reference("astro", *photos["astronaut"], "person")]
    opts = synth.Imitation(retouch_share=0.5)
    made = synth.imitate_iharmony4(
        img, m, 6, np.random.default_rng(1), refs=refs, category="cats", image_id="coffee", opts=opts
    )
    assert len(made) == 6
    for c, region, base in made:
        assert c.image.shape == img.shape and region.shape == m.shape and base.shape == img.shape
        assert np.array_equal(c.image[region == 0], base[region == 0])  # background untouched
        assert synth.realism_check(base, c.image, region)[0]
        assert c.method in ("retouch",) + synth.TRANSFER_METHODS
        if c.method != "retouch":
            assert c.ref_id == "chelsea" and c.params["same_category"]  # "cats" -> "cat"
    again = synth.imitate_iharmony4(
        img, m, 6, np.random.default_rng(1), refs=refs, category="cats", image_id="coffee", opts=opts
    )
    assert all(np.array_equal(a[0].image, b[0].image) for a, b in zip(made, again))


def test_default_recipe_rows_unchanged():
    """The mixed recipe (the default) makes the same rows, byte for byte, as before the iharmony4-like recipe."""
    import hashlib

    from dirl.data import build

    rows = [
        _stored_row(name, im)
        for name, im in (("coffee", data.coffee()), ("chelsea", data.chelsea()), ("astronaut", data.astronaut()))
    ]
    build._init_synth(build.reference_rows(rows, seed=0))
    res = build._synth_chunk((rows, 2, tuple(METHODS), 20, 0, 1, 0.8))
    h = hashlib.sha256()
    for row, problem in res:
        h.update(repr(problem).encode())
        if row:
            for k in ("id", "synth_method", "ref_id", "image", "mask", "real"):
                h.update(row[k] if isinstance(row[k], bytes) else repr(row[k]).encode())
    assert len(res) == 9
    assert h.hexdigest() == "d6bdbd54e6e7d0d10e602bac1fcb20ce3a2949bad75cd9b3effc9a12a6bdf3f1"


def test_apply_lut_on_a_large_region_matches_per_pixel_interpolation():
    """A region of more pixels than OpenCV's remap takes along one side (32,767) still maps every pixel through the
    LUT (the maps are 2-d), and the result is the trilinear interpolation of the LUT."""
    from dirl.data.synth import apply_lut, random_lut

    rng = np.random.default_rng(0)
    lut, _ = random_lut(rng)
    pixels = rng.integers(0, 256, (100_000, 3), dtype=np.uint8)
    out = apply_lut(pixels, lut)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    s = lut.shape[0]
    x = pixels[:5].astype(np.float64) / 255.0 * (s - 1)  # trilinear interpolation of the first 5 pixels, by hand
    lo = np.floor(x).astype(int).clip(0, s - 2)
    f = x - lo
    want = np.zeros((5, 3))
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                w = (
                    (f[:, 0] if dr else 1 - f[:, 0])
                    * (f[:, 1] if dg else 1 - f[:, 1])
                    * (f[:, 2] if db else 1 - f[:, 2])
                )
                want += w[:, None] * lut[lo[:, 0] + dr, lo[:, 1] + dg, lo[:, 2] + db]
    assert np.abs(out[:5].astype(float) - 255.0 * want).max() <= 2.0


def test_a_photo_short_of_composites_is_noted_not_bad():
    """A photo that gives some but fewer than synth.per_image composites is used and noted; one that gives none is a
    bad item. Only bad items count against data.max_bad_fraction."""
    from dirl.data import build

    row = _stored_row("coffee", data.coffee())
    build._init_synth(build.reference_rows([row], seed=0))
    res = build._synth_chunk(([row], 200, tuple(METHODS), 1, 0, 0, 0.0))  # 200 asked, one try each: a shortfall
    made = [r for r, p in res if r is not None]
    problems = [p for r, p in res if p]
    assert 0 < len(made) < 200 and len(problems) == 1
    assert problems[0].startswith(build.SHORT) and "only" in problems[0]


def test_a_photo_whose_region_always_touches_the_frame_is_skipped_and_noted_not_bad():
    """Under synth.max_border a photo whose region covers the frame's edge at every crop (a band of sky) gives no
    composite by design: it is noted, not a bad item; a photo with an object inside the frame gives its composites."""
    from dirl.data import build
    from dirl.data.images import encode_png

    sky = _stored_row("coffee", data.coffee())
    band = np.zeros((64, 64), np.uint8)
    band[:20] = 1
    sky["mask"] = encode_png(band)
    obj = _stored_row("chelsea", data.chelsea())
    build._init_synth(build.reference_rows([sky, obj], seed=0))
    opts = synth.Imitation(max_border=0.05, max_zoom=4.0, retouch_share=1.0)
    res = build._synth_chunk(([sky, obj], 2, tuple(METHODS), 20, 0, 0, 0.0, opts))
    problems = [p for r, p in res if p]
    assert [r["id"].split("_")[0] for r, _ in res if r is not None] == ["chelsea", "chelsea"]
    assert len(problems) == 1 and problems[0].startswith(build.SHORT) and "coffee" in problems[0]
    assert "synth.max_border" in problems[0]


def test_foreign_region_is_the_outline_scaled_and_placed_by_the_target():
    """A foreign region keeps the other object's outline (a wide ellipse stays wide), lies inside the frame, and its
    area and centre follow the target distribution (median area 0.22, centre near (0.5, 0.52))."""
    shape = np.zeros((90, 200), np.uint8)
    cv2.ellipse(shape, (120, 45), (60, 20), 0, 0, 360, 1, -1)  # 3:1 wide, off-centre in its photo
    rng = np.random.default_rng(0)
    areas, cx, cy = [], [], []
    for _ in range(300):
        r = synth.foreign_region(shape, 100, 120, rng)
        assert r.shape == (100, 120) and r.dtype == np.uint8 and r.any()
        ys, xs = np.nonzero(r)
        assert 2.0 < (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1) < 4.0  # the outline's aspect kept
        areas.append(r.mean())
        cx.append(xs.mean() / 120)
        cy.append(ys.mean() / 100)
    assert 0.18 < np.median(areas) < 0.26 and min(areas) >= 0.02 and max(areas) <= 0.55
    assert abs(np.median(cx) - 0.5) < 0.05 and abs(np.median(cy) - 0.52) < 0.05
    with pytest.raises(ValueError, match="empty"):
        synth.foreign_region(np.zeros((8, 8), np.uint8), 10, 10, rng)


def test_imitate_foreign_composites_recolour_another_photos_outline(photos):
    """Each foreign composite changes only its region, passes the realism filter, and takes its outline from another
    photo, never from the photo itself; the same seed makes the same composites."""
    img, m = photos["coffee"]
    refs = [Reference(n, *photos[n], None) for n in ("coffee", "chelsea", "astronaut")]
    opts = synth.Imitation(retouch_share=0.5, foreign=4)

    def make():
        return synth.imitate_foreign(
            img, 4, np.random.default_rng(3), shapes=refs, refs=refs, image_id="coffee", opts=opts
        )

    made = make()
    assert len(made) == 4
    for c, region, base in made:
        assert region.shape == m.shape and not np.array_equal(region, m)
        assert np.array_equal(c.image[region == 0], base[region == 0])  # background untouched
        assert synth.realism_check(base, c.image, region)[0]
        assert c.params["shape"] in ("chelsea", "astronaut") and c.ref_id != "coffee"
    assert all(np.array_equal(a[0].image, b[0].image) for a, b in zip(made, make()))
    assert synth.imitate_foreign(img, 2, np.random.default_rng(3), shapes=refs[:1], refs=refs, image_id="coffee") == []


def test_foreign_shapes_add_composites_without_changing_the_object_ones():
    """synth.foreign_shapes adds composites on other photos' outlines (ids ``_x<k>``) after a photo's object
    composites, which stay byte for byte what they were; a photo skipped by max_border still gets its foreign ones."""
    from dirl.data import build
    from dirl.data.images import decode_mask, encode_png

    def decode_png(b: bytes) -> np.ndarray:
        return decode_mask(b)[0]

    sky = _stored_row("coffee", data.coffee())
    band = np.zeros((64, 64), np.uint8)
    band[:20] = 1
    sky["mask"] = encode_png(band)
    rows = [sky, _stored_row("chelsea", data.chelsea()), _stored_row("astronaut", data.astronaut())]
    build._init_synth(build.reference_rows(rows, seed=0))
    base = synth.Imitation(max_border=0.05, max_zoom=4.0)
    without = build._synth_chunk((rows, 2, tuple(METHODS), 20, 0, 0, 0.0, base))
    with_ = build._synth_chunk(
        (rows, 2, tuple(METHODS), 20, 0, 0, 0.0, synth.Imitation(**{**base.__dict__, "foreign": 2}))
    )
    own = {r["id"]: r["image"] for r, _ in without if r}
    assert own and all(k.split("_")[1].startswith("i") for k in own)
    extra = {r["id"]: r for r, _ in with_ if r and r["id"] not in own}
    assert {r["id"]: r["image"] for r, _ in with_ if r and r["id"] in own} == own
    assert sorted(extra) == [f"{p}_x{k}" for p in ("astronaut", "chelsea", "coffee") for k in range(2)]
    for r in extra.values():  # the region is another photo's ellipse or band, never this photo's own mask
        region = decode_png(r["mask"])
        stored = decode_png(next(x for x in rows if x["id"] == r["id"].split("_")[0])["mask"])
        assert region.any() and not np.array_equal(region > 0, stored > 0)
    assert [p for _, p in with_ if p] == [p for _, p in without if p]  # the skip note unchanged


def _stored_row(name: str, im: np.ndarray) -> dict:
    """A 64 x 64 photo row as preprocess stores it (an elliptic object mask), for the synthesis chunk workers."""
    from dirl.data.images import encode_jpeg, encode_png

    im = np.ascontiguousarray(cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA))
    m = np.zeros((64, 64), np.uint8)
    cv2.ellipse(m, (32, 30), (18, 14), 0, 0, 360, 1, -1)
    return {
        "id": name,
        "subset": "sample",
        "split": "train",
        "image": encode_jpeg(im),
        "mask": encode_png(m),
        "real": None,
        "orig_h": 64,
        "orig_w": 64,
        "height": 64,
        "width": 64,
        "fg_ratio": float(m.mean()),
    }
