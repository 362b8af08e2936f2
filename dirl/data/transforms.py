"""What the model sees: the one place where images are resized and normalised for the model, on numpy arrays.

Training (:func:`train_transform`), validation (:func:`eval_transform`), evaluation (``dirl.lifecycle.evaluate``)
and serving (``dirl.lifecycle.predict``, the MLflow pyfunc) all go through :func:`eval_resize` /
:func:`model_input` / :func:`map_to_image`, so the three cannot drift apart.

Train: random resized crop to ``size`` (scale (0.9, 1.0), ratio (3/4, 4/3), bilinear), redrawn until the mask keeps
more than 10 foreground pixels (an emptier crop is accepted with probability 0.05), then a horizontal flip with
p = 0.5. No colour augmentation by default: the colour mismatch is the signal. ``jitter`` > 0 (``train.jitter``) adds
one global photometric change of the whole crop (:func:`photometric_jitter`), which leaves the region's mismatch with
its surroundings in place and keeps a model from learning a photo's own colours.
Eval: plain resize to ``size``.
Both return an ImageNet-normalised ``(3, H, W)`` float32 image and a ``(1, H, W)`` float32 {0, 1} mask.
Masks are resized like images and binarised at 0.5 (``images.resize_mask``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dirl.data.images import resize_image, resize_mask

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SCALE = (0.9, 1.0)
RATIO = (3 / 4, 4 / 3)
MIN_FG_PIXELS = 10  # a train crop must keep more than this many foreground pixels ...
ACCEPT_EMPTY_P = 0.05  # ... or is accepted anyway with this probability
MAX_REDRAWS = 20  # after this many rejected crops, the whole image is used (resized, no crop)


def crop_params(h: int, w: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """A random crop ``(top, left, ch, cw)`` covering ``scale`` of the area with aspect in ``ratio``.

    Same algorithm as torchvision's ``RandomResizedCrop.get_params``: 10 tries, then a centre crop with the
    aspect clamped into ``ratio``.
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_SHIFT = (MEAN / STD).astype(np.float32)


def normalize(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32, ``(x / 255 - mean) / std`` (ImageNet)."""
    out = np.empty((3,) + img.shape[:2], np.float32)  # (3, H, W)
    for c, channel in enumerate(cv2.split(img)):  # 3 x (H, W) uint8
        out[c] = channel
        out[c] *= _SCALE[c]
        out[c] -= _SHIFT[c]
    return out


def denormalize(x) -> np.ndarray:
    """Inverse of :func:`normalize` for display: ``(3, H, W)`` or ``(B, 3, H, W)`` array or tensor -> uint8
    ``(H, W, 3)`` or ``(B, H, W, 3)``."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, np.float32)
    chw_last = np.moveaxis(x, -3, -1)  # (..., H, W, 3)
    return np.clip(np.rint((chw_last * STD + MEAN) * 255.0), 0, 255).astype(np.uint8)


def _mask_tensor(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float32)[None]  # (H, W) -> (1, H, W)


def photometric_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One global change of a ``(H, W, 3)`` uint8 image, the same for every pixel: ``y_c = clip(((x / 255) ** g * k_c
    - 0.5) * c + 0.5 + b)`` with gamma ``g``, contrast ``c`` = exp(U(-s, s)), per-channel gain ``k_c`` =
    exp(U(-s/2, s/2)) and brightness ``b`` = U(-s/4, s/4), as one 256-entry look-up table per channel. The train-time
    counterpart of ``synth.recolour`` (:func:`dirl.data.synth.recolour_image`, drawn once per stored composite):
    redrawn for every crop of every epoch."""
    s = float(strength)
    gamma, contrast = np.exp(rng.uniform(-s, s, 2))
    gains = np.exp(rng.uniform(-s / 2, s / 2, 3))  # (3,)
    bright = rng.uniform(-s / 4, s / 4)
    x = (np.arange(256, dtype=np.float64) / 255.0) ** gamma  # (256,)
    lut = ((x[:, None] * gains[None] - 0.5) * contrast + 0.5 + bright) * 255.0  # (256, 3)
    lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8)[:, None, :]  # (256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(img), lut)


def train_transform(
    img: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator, jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Reference train augmentation; deterministic given ``rng``. Returns ``(x (3,S,S), m (1,S,S))`` float32.

    The crop is redrawn until the resized mask keeps > ``MIN_FG_PIXELS`` foreground pixels, or accepted anyway
    with probability ``ACCEPT_EMPTY_P``; after ``MAX_REDRAWS`` rejections the whole image is resized instead.
    ``jitter`` > 0 then applies :func:`photometric_jitter` (drawn after the crop and flip, so ``jitter`` = 0 draws
    exactly the reference's crops).
    """
    h, w = mask.shape
    for _ in range(MAX_REDRAWS):
        top, left, ch, cw = crop_params(h, w, rng)
        m = resize_mask(mask[top : top + ch, left : left + cw], size)  # (ch, cw) -> (S, S)
        if int(m.sum()) > MIN_FG_PIXELS or rng.random() < ACCEPT_EMPTY_P:
            x = resize_image(img[top : top + ch, left : left + cw], size)  # (ch, cw, 3) -> (S, S, 3)
            break
    else:
        x, m = resize_image(img, size), resize_mask(mask, size)
    if rng.random() < 0.5:
        x, m = cv2.flip(x, 1), cv2.flip(m, 1)  # horizontal; contiguous, unlike x[:, ::-1]
    if jitter > 0:
        x = photometric_jitter(x, jitter, rng)  # (S, S, 3) uint8, the whole crop changed alike
    return normalize(x), _mask_tensor(m)


def eval_resize(
    img: np.ndarray, mask: np.ndarray, size: int, interpolation: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """One resize straight to ``size`` x ``size``: image ``(S, S, 3)`` uint8, mask ``(S, S)`` {0, 1} (cut at 0.5, as
    the reference). ``interpolation``: ``bilinear`` = the reference's plain bilinear resize; ``auto`` = area filter
    when shrinking by more than 1.25x (``evaluate.interpolation``)."""
    return resize_image(img, size, interpolation), resize_mask(mask, size, interpolation)


def model_input(img: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image of any size ``(h, w, 3)`` -> the model's input ``(3, S, S)`` float32 (resize, normalise)."""
    return normalize(resize_image(img, size))


def map_to_image(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A predicted map ``(S, S)`` back to the image's ``(h, w)`` (bilinear)."""
    h, w = shape[:2]
    return prob if prob.shape == (h, w) else cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def eval_transform(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain resize to ``size`` x ``size``, normalised. Returns ``(x (3,S,S), m (1,S,S))`` float32."""
    x, m = eval_resize(img, mask, size)
    return normalize(x), _mask_tensor(m)
