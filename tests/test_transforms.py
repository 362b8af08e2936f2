"""Train / eval transforms: crop geometry, foreground rule, flips, sizes, normalisation."""

import cv2
import numpy as np
import torch

from dirl.data.images import resize_mask
from dirl.data.transforms import (
    MEAN,
    STD,
    crop_params,
    denormalize,
    eval_transform,
    normalize,
    photometric_jitter,
    train_transform,
)


def scene(h=96, w=128, box=(10, 20, 30, 20)):
    """Blue image with a red box (top, left, height, width) that is also the mask's foreground."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (0, 0, 255)
    mask = np.zeros((h, w), np.uint8)
    top, left, bh, bw = box
    img[top : top + bh, left : left + bw] = (255, 0, 0)
    mask[top : top + bh, left : left + bw] = 1
    return img, mask


def test_crop_params_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    for h, w in [(256, 256), (100, 180), (300, 120)]:
        for _ in range(200):
            top, left, ch, cw = crop_params(h, w, rng)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
            if (h, w) == (256, 256):  # square image: the first draw always fits
                assert 0.88 <= ch * cw / (h * w) <= 1.0
                assert 3 / 4 - 0.02 <= cw / ch <= 4 / 3 + 0.02


def test_train_transform_shapes_normalisation_and_determinism():
    img, mask = scene()
    x, m = train_transform(img, mask, 64, np.random.default_rng(1))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    assert m.shape == (1, 64, 64) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    blue = (np.array([0.0, 0.0, 1.0], np.float32) - MEAN) / STD
    assert np.allclose(x[:, m[0] == 0].mean(1), blue, atol=0.05)  # background pixels stay ImageNet-normalised blue
    x2, m2 = train_transform(img, mask, 64, np.random.default_rng(1))
    assert np.array_equal(x, x2) and np.array_equal(m, m2)
    x3, _ = train_transform(img, mask, 64, np.random.default_rng(2))
    x4, _ = train_transform(img, mask, 64, np.random.default_rng(3))
    assert not (np.array_equal(x, x3) and np.array_equal(x, x4))


def test_jitter_changes_the_whole_image_alike_and_leaves_the_crop_and_mask_alone():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    img[10:20, 10:30] = (200, 60, 40)  # a region of one colour ...
    img[30:35, 0:10] = (200, 60, 40)  # ... and the same colour elsewhere
    out = photometric_jitter(img, 0.3, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    same = {tuple(v) for v in out[10:20, 10:30].reshape(-1, 3)} | {tuple(v) for v in out[30:35, 0:10].reshape(-1, 3)}
    assert len(same) == 1  # one colour in, one colour out, wherever it is
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, 2)  # (256, 1, 3): every value once
    for seed in range(20):  # one increasing curve per channel: the order of values (and so every edge) is kept
        curve = photometric_jitter(ramp, 0.3, np.random.default_rng(seed))[:, 0].astype(int)  # (256, 3)
        assert (np.diff(curve, axis=0) >= 0).all()
    img, mask = scene()
    x0, m0 = train_transform(img, mask, 64, np.random.default_rng(4))
    xj, mj = train_transform(img, mask, 64, np.random.default_rng(4), jitter=0.3)
    assert np.array_equal(m0, mj) and not np.array_equal(x0, xj)  # same crop and flip, other colours
    assert np.array_equal(x0, train_transform(img, mask, 64, np.random.default_rng(4), jitter=0.0)[0])


def test_train_transform_flips_image_and_mask_together():
    img, mask = scene(box=(30, 5, 30, 25))  # foreground on the far left
    sides = []
    for seed in range(40):
        x, m = train_transform(img, mask, 64, np.random.default_rng(seed))
        cols = np.nonzero(m[0].any(0))[0]
        sides.append(cols.mean() > 32)
        rgb = denormalize(x)  # (64, 64, 3)
        inside = m[0] == 1
        assert rgb[inside][:, 0].mean() > 200  # red under the mask: image and mask flipped together
        assert rgb[~inside][:, 2].mean() > 200
    assert 8 <= sum(sides) <= 32  # about half flipped


def test_train_transform_keeps_small_foreground():
    img, mask = scene(h=256, w=256, box=(0, 0, 6, 6))  # a 36-pixel object in a corner, easily cropped out
    kept = 0
    for seed in range(100):
        _, m = train_transform(img, mask, 224, np.random.default_rng(seed))
        kept += m.sum() > 10
    assert kept >= 85  # only the p = 0.05 acceptance lets an empty crop through


def test_train_transform_with_empty_mask_terminates():
    img, mask = scene()
    x, m = train_transform(img, np.zeros_like(mask), 32, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and m.sum() == 0


def test_eval_transform_is_plain_resize():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    mask = (rng.random((100, 150)) > 0.7).astype(np.uint8)
    x, m = eval_transform(img, mask, 64)
    resized = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float64)  # 100 -> 64: a big shrink
    want = ((resized / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    assert x.shape == (3, 64, 64) and np.abs(x - want).max() < 1e-5
    assert np.array_equal(m[0], resize_mask(mask, 64))
    x, _ = eval_transform(img[:70, :70], mask[:70, :70], 64)  # mild shrink: bilinear
    want = (cv2.resize(img[:70, :70], (64, 64), interpolation=cv2.INTER_LINEAR) / 255.0 - MEAN) / STD
    assert np.abs(x - want.transpose(2, 0, 1)).max() < 1e-5


def test_normalize_denormalize_round_trip():
    img = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = normalize(img)
    assert x.shape == (3, 20, 30)
    assert np.array_equal(denormalize(x), img)
    batch = torch.from_numpy(np.stack([x, x]))
    assert denormalize(batch).shape == (2, 20, 30, 3) and np.array_equal(denormalize(batch)[1], img)
