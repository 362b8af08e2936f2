"""Evaluation metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from dirl.metrics import (
    PR_THRESHOLDS,
    MetricAccumulator,
    baseline_metrics,
    centre_prior,
    normalize_map,
    per_image_metrics,
    subset_of,
)


def norm_pred_reference(d: np.ndarray) -> np.ndarray:
    """The reference's normPRED on one float32 image, written out with torch as it does."""
    t = torch.from_numpy(np.asarray(d, dtype=np.float32))
    ma, mi = torch.max(t), torch.min(t)
    return (t - mi).numpy() if ma - mi < 1e-2 else ((t - mi) / (ma - mi)).numpy()


def sklearn_ap(pred: np.ndarray, gt: np.ndarray) -> float:
    """The reference's AP of one image: sklearn on the normalised GT and prediction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No positive class found" on empty masks
        return average_precision_score(norm_pred_reference(gt).ravel(), norm_pred_reference(pred).ravel())


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Binary masks: a random rectangle each, plus a few scattered foreground pixels."""
    g = (rng.random((n, h, w), dtype=np.float32) < 0.03).astype(np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, max(1, h - 2)), rng.integers(0, max(1, w - 2))
        g[i, y0 : y0 + rng.integers(1, h // 2 + 2), x0 : x0 + rng.integers(1, w // 2 + 2)] = 1
    return g


def noisy_predictions(rng: np.random.Generator, g: np.ndarray, signal: float = 0.4) -> np.ndarray:
    return np.clip(signal * g + rng.random(g.shape, dtype=np.float32), 0, None).astype(np.float32)


@pytest.mark.parametrize("shape", [(6, 5, 7), (5, 32, 32), (3, 64, 48), (2, 1, 9)])
def test_ap_matches_sklearn_continuous(shape):
    rng = np.random.default_rng(sum(shape))
    g = random_masks(rng, *shape)
    p = noisy_predictions(rng, g)
    ap = per_image_metrics(p, g)["ap"]
    expected = [sklearn_ap(p[i], g[i]) for i in range(shape[0])]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("levels", [1, 2, 5, 255])
def test_ap_matches_sklearn_with_ties(levels):
    rng = np.random.default_rng(levels)
    g = random_masks(rng, 8, 24, 20)
    p = (np.round(noisy_predictions(rng, g) / 1.4 * levels) / levels).astype(np.float32)  # many exact ties
    p[0] = 0.7  # one constant image: every pixel tied
    ap = per_image_metrics(p, g)["ap"]
    expected = [sklearn_ap(p[i], g[i]) for i in range(len(p))]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert ap[0] == pytest.approx(g[0].mean())  # all tied: AP is the foreground fraction


def test_hand_computed_ap_f1_iou():
    # 4x4 image, GT = top-left 2x2 block (4 pixels). Prediction already spans [0, 1], so normalising is a no-op.
    g = np.zeros((1, 4, 4), np.uint8)
    g[0, :2, :2] = 1
    p = np.zeros((1, 4, 4), np.float32)
    p[0, 0, 0], p[0, 0, 1], p[0, 0, 2], p[0, 3, 3] = 1.0, 0.9, 0.8, 0.6
    # > 0.5: (0,0) (0,1) (0,2) (3,3) -> #pred 4, TP 2 ((0,0), (0,1)), #gt 4, union 4 + 4 - 2 = 6.
    # P = R = 2/(4 + 1e-6); F1 = 2PR/(P + R + 1e-6); IoU = 2/(6 + 1e-6).
    pr = 2 / 4.000001
    f1 = 2 * pr * pr / (pr + pr + 1e-6)
    # AP, thresholds descending: 1.0 (pos) R .25 P 1; 0.9 (pos) R .5 P 1; 0.8, 0.6 (neg) R unchanged;
    # 0.0 (12 pixels, 2 pos) R 1 P 4/16. AP = .25*1 + .25*1 + .5*.25 = 0.625.
    m = per_image_metrics(p, g)
    assert m["ap"][0] == pytest.approx(0.625, abs=1e-12)
    assert m["f1"][0] == pytest.approx(f1, abs=1e-12)
    assert m["f1"][0] == pytest.approx(0.4999994, abs=1e-6)
    assert m["iou"][0] == pytest.approx(2 / 6.000001, abs=1e-12)


def test_hand_computed_ap_with_tied_scores():
    # scores [1, .5, .5, 0], labels [1, 1, 0, 0]: t=1 -> R .5 P 1; t=.5 -> R 1 P 2/3; t=0 adds no recall.
    # AP = .5*1 + .5*2/3 = 5/6. F1 at > 0.5: pred {1.0}, TP 1, #gt 2 -> P = 1/(1+1e-6), R = 1/(2+1e-6).
    p = np.array([[[1.0, 0.5], [0.5, 0.0]]], np.float32)
    g = np.array([[[1, 1], [0, 0]]], np.uint8)
    m = per_image_metrics(p, g)
    assert m["ap"][0] == pytest.approx(5 / 6, abs=1e-12)
    prec, rec = 1 / 1.000001, 1 / 2.000001
    assert m["f1"][0] == pytest.approx(2 * prec * rec / (prec + rec + 1e-6), abs=1e-12)
    assert m["iou"][0] == pytest.approx(1 / 2.000001, abs=1e-12)  # union = 1 + 2 - 1


def test_normalize_map_rules():
    p = np.array([[0.2, 0.6], [1.0, 0.4]], np.float32)
    np.testing.assert_allclose(normalize_map(p), [[0.0, 0.5], [1.0, 0.25]], atol=1e-7)
    flat = np.array([[0.300, 0.305], [0.302, 0.309]], np.float32)  # max - min = 0.009 < 1e-2: only shifted
    np.testing.assert_allclose(normalize_map(flat), flat - np.float32(0.3), atol=1e-7)
    batch = np.stack([p, flat])
    out = normalize_map(batch)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], normalize_map(p))
    np.testing.assert_array_equal(out[1], normalize_map(flat))
    np.testing.assert_array_equal(out[1], norm_pred_reference(flat))


def test_flat_prediction_gives_zero_f1_iou_and_sklearn_ap():
    rng = np.random.default_rng(3)
    g = random_masks(rng, 3, 16, 16)
    p = (0.6 + 0.008 * rng.random(g.shape)).astype(np.float32)  # range < 1e-2: shifted only, stays < 0.5
    m = per_image_metrics(p, g)
    np.testing.assert_array_equal(m["f1"], 0.0)
    np.testing.assert_array_equal(m["iou"], 0.0)
    np.testing.assert_allclose(m["ap"], [sklearn_ap(p[i], g[i]) for i in range(3)], atol=1e-12)


def test_empty_mask_matches_sklearn_zero():
    p = np.random.default_rng(4).random((2, 8, 8)).astype(np.float32)
    g = np.zeros((2, 8, 8), np.uint8)
    with pytest.warns(UserWarning, match="No positive class"):
        sk = average_precision_score(g[0].ravel(), p[0].ravel())
    assert sk == 0.0  # scikit-learn 1.9 returns 0.0 for an all-negative y_true
    m = per_image_metrics(p, g)
    np.testing.assert_array_equal(m["ap"], 0.0)
    np.testing.assert_array_equal(m["f1"], 0.0)  # TP = 0
    np.testing.assert_array_equal(m["iou"], 0.0)


def test_foreground_vanished_at_input_size_is_scored_not_dropped():
    """A 3-pixel object of a 1000 x 800 composite is gone at 224 (bilinear + 0.5): the image still counts."""
    from dirl.data.images import resize_mask

    tiny = np.zeros((1000, 800), np.uint8)
    tiny[500, 400:403] = 1
    gone = resize_mask(tiny, 224)
    assert not gone.any()
    rng = np.random.default_rng(8)
    normal = random_masks(rng, 1, 224, 224)[0]
    g = np.stack([normal, gone])
    preds = [
        noisy_predictions(rng, g),  # some pixels > 0.5 on the empty image: F1 = IoU = 0, not NaN
        np.zeros(g.shape, np.float32),
    ]  # a flat map (range < 1e-2): only shifted
    for p in preds:
        acc = MetricAccumulator()
        acc.update(p[:, None], g[:, None], ["c1_1_1", "c2_1_1"])
        rows = acc.per_image()
        assert [r["id"] for r in rows] == ["c1_1_1", "c2_1_1"]
        assert rows[1] == {"id": "c2_1_1", "ap": 0.0, "f1": 0.0, "iou": 0.0}
        assert rows[1]["ap"] == sklearn_ap(p[1], g[1])  # scikit-learn 1.9: 0.0 (with a warning), not NaN
        res = acc.compute()
        assert res["n"] == 2 and np.isfinite([res["AP"], res["F1"], res["IoU"]]).all()
        assert res["AP"] == pytest.approx(100 * (rows[0]["ap"] + 0.0) / 2)


def test_all_foreground_mask_is_zeroed_like_the_reference():
    g = np.ones((1, 6, 6), np.uint8)
    p = np.random.default_rng(5).random((1, 6, 6)).astype(np.float32) * 0.5 + 0.5
    # sklearn on the raw mask would say 1.0; the reference normalises the GT first, which zeroes it
    assert average_precision_score(g[0].ravel(), p[0].ravel()) == 1.0
    m = per_image_metrics(p, g)
    assert m["ap"][0] == sklearn_ap(p[0], g[0]) == 0.0
    assert m["f1"][0] == 0.0 and m["iou"][0] == 0.0


def test_gt_in_0_255_is_normalised_to_binary():
    rng = np.random.default_rng(6)
    g = random_masks(rng, 3, 12, 12)
    p = noisy_predictions(rng, g)
    a, b = per_image_metrics(p, g), per_image_metrics(p, g * 255)
    for key in ("ap", "f1", "iou"):
        np.testing.assert_array_equal(a[key], b[key])


def test_subset_of():
    assert subset_of("c12345_1_2.jpg") == "HCOCO"
    assert subset_of("HAdobe5k/composite_images/a0002_1_3.jpg") == "HAdobe5k"
    assert subset_of("f1510_1_2") == "HFlickr"
    assert subset_of("d90000002-9_1_1.jpg") == "Hday2night"
    assert subset_of("synthetic_0001") == "other"
    assert subset_of("") == "other"


def test_subset_means_and_per_image_rows():
    rng = np.random.default_rng(7)
    g = random_masks(rng, 10, 16, 16)
    p = noisy_predictions(rng, g, signal=0.6)
    ids = ["c1", "c2", "c3", "HFlickr/composite_images/f4_1_1.jpg", "f5", "a6", "d7", "x8", "c9", "d10"]
    acc = MetricAccumulator()
    acc.update(p, g, ids)
    res = acc.compute()
    rows = acc.per_image()
    assert [r["id"] for r in rows] == ids
    assert res["n"] == 10
    assert list(res["subsets"]) == ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "other"]
    for name, members in {
        "HCOCO": [0, 1, 2, 8],
        "HFlickr": [3, 4],
        "HAdobe5k": [5],
        "Hday2night": [6, 9],
        "other": [7],
    }.items():
        sub = res["subsets"][name]
        assert sub["n"] == len(members)
        assert sub["AP"] == pytest.approx(100 * np.mean([rows[i]["ap"] for i in members]))
        assert sub["F1"] == pytest.approx(np.mean([rows[i]["f1"] for i in members]))
        assert sub["IoU"] == pytest.approx(100 * np.mean([rows[i]["iou"] for i in members]))
    assert res["AP"] == pytest.approx(100 * np.mean([sklearn_ap(p[i], g[i]) for i in range(10)]))


def test_accumulator_batches_equal_one_shot():
    rng = np.random.default_rng(8)
    g = random_masks(rng, 11, 20, 18)
    p = noisy_predictions(rng, g)
    ids = [f"{'cafd'[i % 4]}{i}" for i in range(11)]
    one = MetricAccumulator()
    one.update(p, g, ids)
    many = MetricAccumulator()
    for a, b in [(0, 4), (4, 5), (5, 11)]:  # mixed input kinds: numpy (N,H,W), torch (N,1,H,W)
        if a == 4:
            many.update(torch.from_numpy(p[a:b, None]), torch.from_numpy(g[a:b, None]).float(), ids[a:b])
        else:
            many.update(p[a:b], g[a:b], ids[a:b])
    assert len(many) == 11
    assert many.compute() == one.compute()
    assert many.per_image() == one.per_image()
    assert many.pr_curve() == one.pr_curve()
    direct = per_image_metrics(p, g)
    np.testing.assert_array_equal([r["ap"] for r in one.per_image()], direct["ap"])


def test_pr_curve_matches_direct_count():
    rng = np.random.default_rng(9)
    g = random_masks(rng, 4, 16, 16)
    p = noisy_predictions(rng, g)
    acc = MetricAccumulator()
    acc.update(p, g, ["c0", "c1", "c2", "c3"])
    curve = acc.pr_curve()
    assert len(curve) == len(PR_THRESHOLDS) == 101
    pn = np.stack([norm_pred_reference(x) for x in p]).astype(np.float64)
    for row in curve[::10]:
        sel = pn >= row["threshold"]
        assert row["precision"] == pytest.approx((sel & (g == 1)).sum() / max(sel.sum(), 1) if sel.any() else 1.0)
        assert row["recall"] == pytest.approx((sel & (g == 1)).sum() / (g == 1).sum())
    assert curve[0]["recall"] == 1.0 and curve[0]["precision"] == pytest.approx(g.mean())
    recalls = [r["recall"] for r in curve]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))


def test_centre_prior_and_baseline():
    prior = centre_prior(9, 13)
    assert prior.shape == (9, 13) and prior.dtype == np.float32
    assert prior[4, 6] == pytest.approx(1.0) and prior.argmax() == 4 * 13 + 6
    np.testing.assert_allclose(prior, prior[::-1, ::-1], atol=1e-7)
    assert prior[4, 0] < prior[4, 3] < prior[4, 6]
    centred = np.zeros((3, 32, 32), np.uint8)
    centred[:, 12:20, 12:20] = 1
    corner = np.zeros((3, 32, 32), np.uint8)
    corner[:, :8, :8] = 1
    ids = ["c1", "a2", "f3"]
    good, bad = baseline_metrics(centred, ids), baseline_metrics(corner, ids)
    assert good["n"] == 3 and set(good["subsets"]) == {"HCOCO", "HAdobe5k", "HFlickr"}
    assert good["AP"] > 50 > bad["AP"]
    assert good["IoU"] > bad["IoU"]
    direct = per_image_metrics(np.broadcast_to(centre_prior(32, 32), (3, 32, 32)), centred)
    assert good["AP"] == pytest.approx(100 * direct["ap"].mean())


def test_bad_inputs_raise_clear_errors():
    p = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        per_image_metrics(p, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        per_image_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="binary"):
        per_image_metrics(p, np.array([[[0, 0.5, 1, 1]] * 4] * 2))
    bad = p.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        per_image_metrics(bad, np.zeros((2, 4, 4)))
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="ids"):
        acc.update(p, np.zeros((2, 4, 4)), ["c1"])
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()


def test_real_ihd_masks(shared_data):
    """Genuine iHarmony4 masks (test resolution 224, bilinear + 0.5 as the reference) against sklearn."""
    import cv2

    paths = sorted((shared_data / "ihd_dev").glob("*/masks/*.png"))
    if not paths:
        pytest.skip("no masks under ../shared/data/ihd_dev")
    rng = np.random.default_rng(10)
    gts, ids = [], []
    for path in paths:
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        gts.append((cv2.resize(m, (224, 224), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8))
        ids.append(path.name)
    g = np.stack(gts)
    blurred = np.stack([cv2.GaussianBlur(x.astype(np.float32), (0, 0), 6) for x in g])
    p = (np.round(np.clip(blurred + 0.3 * rng.random(g.shape), 0, 1) * 255) / 255).astype(np.float32)  # 8-bit
    acc = MetricAccumulator()
    acc.update(p, g, ids)
    np.testing.assert_allclose(
        [r["ap"] for r in acc.per_image()], [sklearn_ap(p[i], g[i]) for i in range(len(g))], atol=1e-12
    )
    res = acc.compute()
    assert sum(s["n"] for s in res["subsets"].values()) == res["n"] == len(paths)
    base = baseline_metrics(g, ids)
    assert res["AP"] > base["AP"]  # a mask-shaped prediction beats the centre prior


def test_speed_1000_images_224():
    rng = np.random.default_rng(11)
    g = random_masks(rng, 1000, 224, 224)
    p = noisy_predictions(rng, g)
    t0 = time.perf_counter()
    acc = MetricAccumulator()
    for i in range(0, 1000, 100):
        acc.update(p[i : i + 100], g[i : i + 100], [f"c{j}" for j in range(i, i + 100)])
    res = acc.compute()
    dt = time.perf_counter() - t0
    print(f"\nevaluated 1000 images of 224x224 (continuous predictions) in {dt:.2f} s")
    assert res["n"] == 1000
    assert dt < 60.0
    for i in (0, 499, 999):  # spot check against sklearn
        assert acc.per_image()[i]["ap"] == pytest.approx(sklearn_ap(p[i], g[i]), abs=1e-12)
