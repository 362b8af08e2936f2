"""Composite synthesis: alter the colour of one masked object, keep the background bit-identical.

Every method computes ``C = M * T(I) + (1 - M) * I`` on an ``(H, W, 3)`` uint8 RGB image ``I`` and an
``(H, W)`` uint8 {0, 1} mask ``M``: ``T`` is evaluated on the foreground pixels only and written back into a
copy of ``I``, so background bytes are never touched. The methods imitate how iHarmony4 was built
(see "How iHarmony4 made its composites" in the DIRL spec):

- ``reinhard``: mean/std matching per channel in l-alpha-beta (RGB -> LMS -> log10 -> lab), Reinhard et al. 2001.
- ``xiao``: mean + covariance matching in RGB, Xiao & Ma 2006.
- ``fecker``: per-channel cumulative-histogram matching in YCbCr, Fecker et al. 2008.
- ``idt``: Pitie's iterative N-d PDF transfer (random rotations + 1-d histogram matching) + regrain.
- ``lighting``: random exposure / gamma / white balance (no reference).
- ``lut``: a random smooth 17^3 colour LUT applied with trilinear interpolation (SycoNet-style, no reference).

Colour-transfer methods (the first four) take their target statistics from a reference region
(``ref_image``, ``ref_mask``: another object, ideally of the same category). Statistics are computed over masked
pixels only, on at most ``MAX_STAT_PIXELS`` pixels taken with a regular stride. Without a reference, the
reference pixels are the image's own foreground after a random affine colour change (per-channel gain and
offset, a small 3x3 channel mixing and a contrast change, see :func:`_random_reference`): random but plausible
target statistics.

Everything is vectorised numpy / OpenCV and deterministic for a given ``np.random.Generator`` state.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from dirl.data.compare import lab, ring_mask
from dirl.data.regions import FREE_FORM_AREA, free_form_mask  # noqa: F401 - also imported from here

log = logging.getLogger(__name__)

TRANSFER_METHODS = ("reinhard", "xiao", "fecker", "idt")  # need a reference region (or use the fallback)
FREE_METHODS = ("lighting", "lut")  # reference-free
METHODS = TRANSFER_METHODS + FREE_METHODS
RETOUCH_METHODS = ("retouch",)  # a global photo edit of the region (the iharmony4-like recipe's HAdobe5k share)
ALL_METHODS = METHODS + RETOUCH_METHODS
PARAMETRIC_METHODS = ("reinhard", "xiao", "fecker", "lighting", "lut")

MAX_STAT_PIXELS = 16384  # statistics are taken on at most this many masked pixels (regular stride)
MIN_CHANGE = 3.0  # quality_check: minimum mean |C - I| over foreground pixels and channels, in 8-bit levels
MAX_CLIPPED = 0.2  # quality_check: maximum fraction of foreground pixels newly clipped to 0 or 255
SHIFT_SLACK = 5.0  # realism filter: a transfer predicted this far (Delta E) above synth.realism_shift[1] is not made

# Reinhard et al. 2001: RGB -> LMS, and log10(LMS) -> l-alpha-beta.
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LAB2LMS = np.linalg.inv(_LMS2LAB)
_LMS2RGB = np.linalg.inv(_RGB2LMS)


# ----------------------------------------------------------------------------- input checks and helpers


def _check_pair(image: np.ndarray, mask: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an (H, W, 3) uint8 image and its (H, W) {0, 1} mask; return the mask as bool."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what} must be an (H, W, 3) uint8 RGB array, got {got}")
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
        found = str(mask.shape) if isinstance(mask, np.ndarray) else type(mask).__name__
        raise ValueError(f"{what} mask must be an (H, W) array matching {image.shape[:2]}, got {found}")
    if mask.dtype != bool and (mask.max(initial=0) > 1 or mask.min(initial=0) < 0):
        raise ValueError(
            f"{what} mask must hold {{0, 1}} (1 = object); got values up to {mask.max()}: "
            f"divide a 0/255 mask by 255 first"
        )
    m = mask.astype(bool, copy=False)
    if not m.any():
        raise ValueError(f"{what} mask is empty: there is no foreground to alter")
    return m


def _strided(pixels: np.ndarray, limit: int = MAX_STAT_PIXELS) -> np.ndarray:
    """At most ``limit`` rows of ``pixels`` taken with a regular stride (deterministic)."""
    step = -(-len(pixels) // limit)
    return pixels[::step] if step > 1 else pixels


def _random_reference(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fallback reference pixels: the foreground after a random affine colour change, (N, 3) float32 in [0, 255].

    ``ref = clip(c * (mix @ (g * x) - mean) + mean + o)`` with per-channel gains ``g = exp(N(0, 0.15))``, a
    mixing matrix ``I + N(0, 0.08)`` (rows normalised to sum 1), a contrast ``c = exp(N(0, 0.15))`` and
    per-channel offsets ``o ~ N(0, 12)`` levels.
    """
    x = _strided(fg).astype(np.float32)
    gains = np.exp(rng.normal(0.0, 0.15, 3))
    mix = np.eye(3) + rng.normal(0.0, 0.08, (3, 3))
    mix /= mix.sum(axis=1, keepdims=True)
    a = (mix * gains[None, :]).astype(np.float32)  # (3, 3): mix @ diag(g)
    y = x @ a.T
    mean = y.mean(axis=0)
    y = np.exp(rng.normal(0.0, 0.15)) * (y - mean) + mean + rng.normal(0.0, 12.0, 3)
    return np.clip(y, 0, 255).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- colour transfer methods
# Each takes the source foreground pixels ``fg`` (N, 3) uint8 and returns the new pixels (N, 3) uint8 and params.


def _rgb_to_lab(x: np.ndarray) -> np.ndarray:
    """(N, 3) 8-bit RGB values -> (N, 3) float32 l-alpha-beta. A +1 offset keeps log10 finite for black."""
    lms = ((x.astype(np.float32) + 1.0) / 256.0) @ _RGB2LMS.T.astype(np.float32)
    return np.log10(np.maximum(lms, 1e-4)) @ _LMS2LAB.T.astype(np.float32)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rgb_to_lab`, unclipped float32 8-bit RGB values."""
    lms = np.power(np.float32(10.0), lab @ _LAB2LMS.T.astype(np.float32))
    return (lms @ _LMS2RGB.T.astype(np.float32)) * 256.0 - 1.0


def _reinhard(fg: np.ndarray, ref: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    """Per-channel mean/std matching in l-alpha-beta; the std ratio is clamped to [0.1, 10]."""
    lab = _rgb_to_lab(fg)  # (N, 3)
    src = _strided(lab)
    ref_lab = _rgb_to_lab(ref)
    mu_s, sd_s = src.mean(axis=0), src.std(axis=0)
    mu_t, sd_t = ref_lab.mean(axis=0), ref_lab.std(axis=0)
    scale = np.clip(sd_t / np.maximum(sd_s, 1e-6), 0.1, 10.0).astype(np.float32)
    out = _lab_to_rgb((lab - mu_s) * scale + mu_t)
    return _to_uint8(out), {
        "src_mean": mu_s.tolist(),
        "src_std": sd_s.tolist(),
        "ref_mean": mu_t.tolist(),
        "ref_std": sd_t.tolist(),
    }


def _principal(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, floored at 1 level^2) and eigenvectors (columns) of a 3x3 covariance."""
    w, u = np.linalg.eigh(cov)
    return np.maximum(w[::-1], 1.0), u[:, ::-1]


def _xiao(fg: np.ndarray, ref: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    """Mean + covariance matching in RGB: ``y = U_t L_t^1/2 L_s^-1/2 U_s^T (x - mu_s) + mu_t``.

    Eigen-axes are paired by rank, and each target axis takes the sign that best aligns it with the source axis
    (the transform rotates colours as little as possible). Per-axis scale is clamped to [0.1, 10].
    """
    x = fg.astype(np.float32)
    src = _strided(x).astype(np.float64)
    tgt = ref.astype(np.float64)
    mu_s, mu_t = src.mean(axis=0), tgt.mean(axis=0)
    w_s, u_s = _principal(np.cov(src, rowvar=False))
    w_t, u_t = _principal(np.cov(tgt, rowvar=False))
    u_t = u_t * np.where(np.sum(u_t * u_s, axis=0) < 0, -1.0, 1.0)[None, :]
    scale = np.clip(np.sqrt(w_t / w_s), 0.1, 10.0)
    a = (u_t * scale[None, :]) @ u_s.T  # (3, 3)
    b = mu_t - a @ mu_s
    out = x @ a.T.astype(np.float32) + b.astype(np.float32)
    return _to_uint8(out), {"src_mean": mu_s.tolist(), "ref_mean": mu_t.tolist(), "matrix": a.tolist()}


def _cdf(values: np.ndarray) -> np.ndarray:
    """(N,) uint8 -> normalised cumulative histogram (256,)."""
    c = np.cumsum(np.bincount(values, minlength=256)).astype(np.float64)
    return c / c[-1]


def _fecker(fg: np.ndarray, ref: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    """Per-channel cumulative-histogram matching in YCbCr (OpenCV's full-range JPEG YCrCb)."""
    ycc = cv2.cvtColor(fg.reshape(-1, 1, 3), cv2.COLOR_RGB2YCrCb).reshape(-1, 3)  # (N, 3) uint8
    ref_ycc = cv2.cvtColor(_to_uint8(ref).reshape(-1, 1, 3), cv2.COLOR_RGB2YCrCb).reshape(-1, 3)
    luts = []
    for c in range(3):
        cdf_s, cdf_t = _cdf(ycc[:, c]), _cdf(ref_ycc[:, c])
        # smallest target level whose cumulative frequency reaches the source level's
        luts.append(np.minimum(np.searchsorted(cdf_t, cdf_s - 1e-12, side="left"), 255).astype(np.uint8))
    lut = np.stack(luts, axis=1)  # (256, 3)
    matched = lut[ycc, np.arange(3)[None, :]]  # (N, 3)
    out = cv2.cvtColor(matched.reshape(-1, 1, 3), cv2.COLOR_YCrCb2RGB).reshape(-1, 3)
    return out, {"lut_ycrcb_mid": lut[128].tolist()}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _masked_blur(x: np.ndarray, m: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``x`` (H, W, 3) using only pixels where ``m`` (H, W) float is 1 (normalised convolution)."""
    num = cv2.GaussianBlur(x * m[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(m, (0, 0), sigma)
    return num / np.maximum(den, 1e-6)[..., None]


def _idt(
    fg: np.ndarray,
    ref: np.ndarray,
    rng: np.random.Generator,
    *,
    image: np.ndarray,
    mask: np.ndarray,
    iterations: int = 10,
    sample: int = 4096,
    quantiles: int = 64,
    regrain_sigma: float = 2.0,
    **_,
) -> tuple[np.ndarray, dict]:
    """Pitie's iterative distribution transfer, then a regrain.

    Each iteration draws a random rotation, projects source and reference pixels on its three axes and maps each
    source projection through the 1-d transfer ``F_ref^-1(F_src(.))``; both CDFs are estimated from ``quantiles``
    quantiles of at most ``sample`` pixels, and the piecewise-linear map is applied to every foreground pixel.

    Regrain (a simple stand-in for Pitie's variational regrain): keep the transferred colours' low frequencies
    and the source's high-frequency detail, ``out = B(T) + I - B(I)``, where ``B`` is a Gaussian blur
    (sigma ``regrain_sigma``) restricted to the foreground (normalised convolution), which removes the grain and
    banding that histogram stretching creates while keeping the object's texture.
    """
    x = fg.astype(np.float32)  # (N, 3)
    n = len(x)
    sub = rng.choice(n, sample, replace=False) if n > sample else np.arange(n)
    y = ref if len(ref) <= sample else ref[rng.choice(len(ref), sample, replace=False)]
    y = y.astype(np.float32)
    q = np.linspace(0.0, 1.0, quantiles)
    for _step in range(iterations):
        rot = _rotation(rng).astype(np.float32)  # rows = axes
        xp = x @ rot.T  # (N, 3)
        yp = y @ rot.T
        xq = np.quantile(xp[sub], q, axis=0)  # (Q, 3)
        yq = np.quantile(yp, q, axis=0)
        d = np.empty_like(xp)
        for j in range(3):
            d[:, j] = np.interp(xp[:, j], xq[:, j], yq[:, j]) - xp[:, j]
        x += d @ rot  # back to RGB; the reference cloud stays fixed
    # regrain on the mask's bounding box (padded by 3 sigma)
    ys, xs = np.nonzero(mask)
    pad = int(np.ceil(3 * regrain_sigma))
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, mask.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, mask.shape[1])
    m = mask[y0:y1, x0:x1]
    src = image[y0:y1, x0:x1].astype(np.float32)
    t = src.copy()
    t[m] = x
    mf = m.astype(np.float32)
    out = _masked_blur(t, mf, regrain_sigma) + src - _masked_blur(src, mf, regrain_sigma)
    return _to_uint8(out[m]), {"iterations": iterations, "regrain_sigma": regrain_sigma}


# ----------------------------------------------------------------------------- reference-free methods


def _lighting(fg: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    """Exposure (+-0.3..1 EV, in linear light), white balance and gamma, as one per-channel 256-entry LUT.

    ``out = (2^ev * wb_c * v^2.2)^(gamma / 2.2)`` on ``v`` in [0, 1]; ``wb`` = exp(N(0, 0.08)) per channel
    with geometric mean 1; ``gamma`` = exp(U(-0.35, 0.35)).
    """
    ev = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0))
    wb = np.exp(rng.normal(0.0, 0.08, 3))
    wb /= np.exp(np.log(wb).mean())
    gamma = float(np.exp(rng.uniform(-0.35, 0.35)))
    v = np.linspace(0.0, 1.0, 256)[:, None]  # (256, 1)
    lin = (v**2.2) * (2.0**ev) * wb[None, :]  # (256, 3)
    lut = _to_uint8(255.0 * np.clip(lin, 0.0, 1.0) ** (gamma / 2.2))
    return lut[fg, np.arange(3)[None, :]], {"ev": ev, "white_balance": wb.tolist(), "gamma": gamma}


LUT_SIZE = 17


def random_lut(rng: np.random.Generator, size: int = LUT_SIZE) -> tuple[np.ndarray, dict]:
    """A random smooth 3-D colour LUT, ``(size, size, size, 3)`` float32 in [0, 1], indexed ``[r, g, b]``.

    Built as: a convex combination (Dirichlet weights) of ``K`` in {2, 3} random monotone per-channel tone curves
    (piecewise linear through 5 knots, increments ~ Dirichlet(2), output range [U(0, .15), U(.85, 1)]), then a
    small 3x3 channel mixing ``I + N(0, 0.1)`` (rows sum to 1), then a luminance-dependent saturation change
    ``s(l) = s0 + s1 (l - 0.5)``, s0 ~ U(0.6, 1.4), s1 ~ U(-0.6, 0.6), which couples the channels non-linearly.
    """
    k = int(rng.integers(2, 4))
    weights = rng.dirichlet(np.ones(k))
    knots_x = np.linspace(0.0, 1.0, 5)
    g = np.linspace(0.0, 1.0, size)
    curves = np.zeros((size, 3))
    knots = []
    for i in range(k):
        lo, hi = rng.uniform(0.0, 0.15, 3), rng.uniform(0.85, 1.0, 3)
        for c in range(3):
            ky = lo[c] + (hi[c] - lo[c]) * np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(4, 2.0)))])
            knots.append(ky.round(4).tolist())
            curves[:, c] += weights[i] * np.interp(g, knots_x, ky)
    mix = np.eye(3) + rng.normal(0.0, 0.1, (3, 3))
    mix /= mix.sum(axis=1, keepdims=True)
    s0, s1 = rng.uniform(0.6, 1.4), rng.uniform(-0.6, 0.6)
    r, gg, b = np.meshgrid(curves[:, 0], curves[:, 1], curves[:, 2], indexing="ij")
    lut = np.stack([r, gg, b], axis=-1) @ mix.T  # (S, S, S, 3)
    luma = lut @ np.array([0.299, 0.587, 0.114])  # (S, S, S)
    sat = s0 + s1 * (luma - 0.5)
    lut = luma[..., None] + sat[..., None] * (lut - luma[..., None])
    params = {
        "curves": k,
        "weights": weights.tolist(),
        "knots": knots,
        "mix": mix.tolist(),
        "saturation": [float(s0), float(s1)],
    }
    return np.clip(lut, 0.0, 1.0).astype(np.float32), params


def apply_lut(pixels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of an ``(S, S, S, 3)`` LUT (indexed [r, g, b], values in [0, 1]) at (N, 3) uint8.

    The LUT is laid out as a 2-D texture (row = b * S + r, column = g); two bilinear ``cv2.remap`` look-ups in
    the slices b0 and b0 + 1 are blended along b. OpenCV's bilinear weights are quantised to 1/32 of a cell,
    so the result may differ from exact trilinear interpolation by one 8-bit level. Returns (N, 3) uint8.
    """
    s = lut.shape[0]
    if lut.shape != (s, s, s, 3) or s < 2:
        raise ValueError(f"apply_lut expects an (S, S, S, 3) LUT, got {lut.shape}")
    tex = np.ascontiguousarray(lut.transpose(2, 0, 1, 3).reshape(s * s, s, 3), dtype=np.float32)  # (S*S, S, 3)
    pos = np.arange(256, dtype=np.float32) * np.float32((s - 1) / 255.0)  # 8-bit level -> grid position
    i0 = np.minimum(pos.astype(np.int32), s - 2)
    n = len(pixels)
    cols = 4096  # remap needs both map sides < 32767: lay the N look-ups out as (rows, cols), zero padded
    rows = max(1, -(-n // cols))
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:n] = pos[g]
    map_y[:n] = i0[b] * s + pos[r]  # rows of slice b0
    mx, my = map_x.reshape(rows, cols), map_y.reshape(rows, cols)  # remap takes 2-d maps of < 32,767 per side
    lo = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)[:n]
    hi = cv2.remap(tex, mx, my + s, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)[:n]
    fb = (pos[b] - i0[b]).reshape(-1, 1)  # (N, 1)
    return _to_uint8(255.0 * (lo + fb * (hi - lo)))


def _lut(fg: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    lut, params = random_lut(rng)
    return apply_lut(fg, lut), params


_TRANSFER = {"reinhard": _reinhard, "xiao": _xiao, "fecker": _fecker, "idt": _idt}


def _retouch(fg: np.ndarray, rng: np.random.Generator, **_) -> tuple[np.ndarray, dict]:
    """A retouch-style global edit, as an expert's photo edit (MIT-Adobe FiveK, behind HAdobe5k) would apply it.

    On ``v`` in [0, 1]: exposure ``2^ev`` (ev ~ +-U(0.15, 0.7)) and white balance (temperature ``t`` ~ N(0, 0.06):
    red gain ``1 + t``, blue ``1 - t``; tint ``g`` ~ N(0, 0.03) on green) in linear light (``v^2.2``); then a
    contrast change around mid-grey ``0.5 + k (x - 0.5)``, k = exp(N(0, 0.2)); then saturation ``s`` = exp(N(0,
    0.25)) around the luma. One global transform of the region's pixels, applied to every pixel alike.
    """
    ev = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.7))
    t, g = float(rng.normal(0.0, 0.06)), float(rng.normal(0.0, 0.03))
    k, sat = float(np.exp(rng.normal(0.0, 0.2))), float(np.exp(rng.normal(0.0, 0.25)))
    gains = np.array([1.0 + t, 1.0 + g, 1.0 - t]) * 2.0**ev
    v = np.linspace(0.0, 1.0, 256)[:, None]  # (256, 1)
    x = np.clip((v**2.2) * gains[None, :], 0.0, 1.0) ** (1 / 2.2)  # (256, 3)
    x = 0.5 + k * (x - 0.5)
    y = x[fg, np.arange(3)[None, :]]  # (N, 3)
    luma = y @ np.array([0.299, 0.587, 0.114])
    y = luma[:, None] + sat * (y - luma[:, None])
    return _to_uint8(255.0 * np.clip(y, 0.0, 1.0)), {
        "ev": ev,
        "temperature": t,
        "tint": g,
        "contrast": k,
        "saturation": sat,
    }


_FREE = {"lighting": _lighting, "lut": _lut, "retouch": _retouch}


# ----------------------------------------------------------------------------- public API


def synthesize_with_params(
    image: np.ndarray,
    mask: np.ndarray,
    method: str,
    rng: np.random.Generator,
    ref_image: np.ndarray | None = None,
    ref_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Like :func:`recolour_region`, also returning the method's parameters (JSON-serialisable) for provenance."""
    m = _check_pair(image, mask)
    if method not in ALL_METHODS:
        raise ValueError(f"unknown synthesis method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    fg = image[m]  # (N, 3) uint8
    if method in _FREE:
        new, params = _FREE[method](fg, rng)
    else:
        if (ref_image is None) != (ref_mask is None):
            raise ValueError("pass both ref_image and ref_mask, or neither (random reference statistics)")
        if ref_image is None:
            ref = _random_reference(fg, rng)
            params = {"reference": "random"}
        else:
            assert ref_mask is not None
            rm = _check_pair(ref_image, ref_mask, "ref_image")
            ref = _strided(ref_image[rm]).astype(np.float32)
            params = {"reference": "region"}
        new, p = _TRANSFER[method](fg, ref, rng, image=image, mask=m)
        params.update(p)
    out = image.copy()
    out[m] = new
    return out, params


def recolour_region(
    image: np.ndarray,
    mask: np.ndarray,
    method: str,
    rng: np.random.Generator,
    ref_image: np.ndarray | None = None,
    ref_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Composite ``C = M * T(I) + (1 - M) * I`` with ``T`` chosen by ``method`` (one of :data:`METHODS`).

    image: (H, W, 3) uint8 RGB; mask: (H, W) {0, 1} (1 = the object to alter). ``ref_image`` / ``ref_mask`` give
    the reference region for the colour-transfer methods (ignored by ``lighting`` and ``lut``); without them the
    target statistics are random (see the module docstring). Returns a new (H, W, 3) uint8 array whose
    background bytes equal the input's.
    """
    return synthesize_with_params(image, mask, method, rng, ref_image, ref_mask)[0]


def quality_check(
    image: np.ndarray,
    composite: np.ndarray,
    mask: np.ndarray,
    min_change: float = MIN_CHANGE,
    max_clipped: float = MAX_CLIPPED,
) -> tuple[bool, str]:
    """Reject degenerate composites; returns ``(ok, reason)`` (reason is "ok" when accepted).

    Rejected when: the background differs from the image; the mean absolute change over foreground pixels and
    channels is below ``min_change`` 8-bit levels; or more than ``max_clipped`` of the foreground pixels have a
    channel newly clipped (0 or 255 in the composite but not in the image).
    """
    m = _check_pair(image, mask)
    if composite.shape != image.shape or composite.dtype != np.uint8:
        return False, f"composite shape/dtype {composite.shape} {composite.dtype} != image {image.shape} uint8"
    if not np.array_equal(composite[~m], image[~m]):
        return False, "background changed"
    a, b = image[m], composite[m]  # (N, 3)
    change = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    if change < min_change:
        return False, f"too little change: mean |delta| {change:.2f} < {min_change} levels"
    newly = ((b == 0) & (a != 0)) | ((b == 255) & (a != 255))
    clipped = float(newly.any(axis=1).mean())
    if clipped > max_clipped:
        return False, f"too many clipped pixels: {clipped:.1%} of the foreground > {max_clipped:.0%}"
    return True, "ok"


def recolour_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole image through one random smooth colour LUT (:func:`random_lut`): a new, still harmonious photo.

    Used before compositing (``synth.recolour``) so that no colour is specific to one photo: a model cannot
    find the region by remembering a training photo's true colours, only by comparing the region with its
    surroundings.
    """
    lut, _ = random_lut(rng)
    return apply_lut(image.reshape(-1, 3), lut).reshape(image.shape)


class ReferenceLike(Protocol):
    id: str
    category: str | None
    image: np.ndarray
    mask: np.ndarray


@dataclass
class Reference:
    """A reference region for colour transfer: another object's pixels (and its category when known)."""

    id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8 {0, 1}
    category: str | None = None
    split: str | None = None  # the split of the row it came from (synthesis picks references of the same split)


@dataclass
class Composite:
    """One accepted composite and its provenance."""

    image: np.ndarray  # (H, W, 3) uint8 RGB; the mask is the source image's
    method: str
    ref_id: str | None  # the reference region's id; None for reference-free methods or random statistics
    params: dict[str, Any] = field(default_factory=dict)  # includes "seed": rebuilds it with recolour_region()


_Made = tuple[Composite, np.ndarray, np.ndarray]  # (composite, region mask (H, W) bool, base image (H, W, 3) uint8)


def pick_reference(
    candidates: Sequence[ReferenceLike], category: str | None, rng: np.random.Generator
) -> ReferenceLike | None:
    """A uniformly random candidate, chosen among those of the same ``category`` when any has it; None if empty."""
    if not candidates:
        return None
    pool = [c for c in candidates if category is not None and c.category == category] or list(candidates)
    return pool[int(rng.integers(len(pool)))]


def _log_shortfall(where: str, image_id: str | None, got: int, n: int, tries: int, rejected: Counter) -> None:
    """A photo that gave fewer composites than asked: to the log (the stage's issues.json names each such photo;
    the console gets their count only)."""
    log.info(
        "%s(%s): %d of %d composites after %d tries; rejections: %s",
        where,
        image_id or "image",
        got,
        n,
        tries,
        dict(rejected),
    )


def _transfer(
    image: np.ndarray,
    mask: np.ndarray,
    method: str,
    pool: Sequence,
    category: str | None,
    rng: np.random.Generator,
    ref: Any = None,
) -> tuple[np.ndarray, dict, Any, int]:
    """One recolouring of ``image``'s region by ``method``, with a reference (``ref``, else one drawn from ``pool``)
    for the transfer methods: ``(composite, params, reference or None, seed)``; the seed of the method's own
    generator is drawn from ``rng``."""
    if ref is None and method in TRANSFER_METHODS:
        ref = pick_reference(pool, category, rng)
    seed = int(rng.integers(2**63 - 1))
    comp, params = synthesize_with_params(
        image,
        mask,
        method,
        np.random.default_rng(seed),
        None if ref is None else ref.image,
        None if ref is None else ref.mask,
    )
    return comp, params, ref, seed


def make_composites(
    image: np.ndarray,
    mask: np.ndarray,
    n: int,
    rng: np.random.Generator,
    methods: Sequence[str] = METHODS,
    refs: Sequence[Reference] = (),
    max_tries: int = 20,
    category: str | None = None,
    image_id: str | None = None,
    min_change: float = MIN_CHANGE,
    max_clipped: float = MAX_CLIPPED,
) -> list[Composite]:
    """``n`` composites of one real image that pass :func:`quality_check`, each with its provenance.

    Each try draws a method uniformly from ``methods``, a reference from ``refs`` (same ``category`` preferred,
    ``image_id`` itself excluded; random statistics when none is left) for colour-transfer methods, and a seed
    stored in ``params["seed"]`` (``recolour_region(image, mask, method, np.random.default_rng(seed), ref...)``
    rebuilds it). A rejected try is redrawn, up to ``max_tries`` tries per composite; if tries run out the
    shortfall is logged with the rejection reasons and fewer than ``n`` composites are returned.
    """
    if n < 0 or max_tries < 1:
        raise ValueError(f"make_composites: n must be >= 0 and max_tries >= 1 (got n={n}, max_tries={max_tries})")
    bad = [mt for mt in methods if mt not in ALL_METHODS]
    if bad or not methods:
        raise ValueError(f"make_composites: unknown or no methods {bad or list(methods)}; choose from {ALL_METHODS}")
    pool = [r for r in refs if image_id is None or r.id != image_id]
    out: list[Composite] = []
    rejected: Counter[str] = Counter()
    tries = 0
    while len(out) < n and tries < n * max_tries:
        tries += 1
        method = methods[int(rng.integers(len(methods)))]
        comp, params, ref, seed = _transfer(image, mask, method, pool, category, rng)
        ok, reason = quality_check(image, comp, mask, min_change, max_clipped)
        if not ok:
            rejected[f"{method}: {reason.split(':')[0]}"] += 1
            continue
        params["seed"] = seed
        out.append(Composite(comp, method, None if ref is None else ref.id, params))
    if len(out) < n:
        _log_shortfall("make_composites", image_id, len(out), n, tries, rejected)
    return out


# ----------------------------------------------------------------------------- the iharmony4-like recipe


@dataclass(frozen=True)
class Imitation:
    """The ``iharmony4-like`` recipe's settings (``synth.*`` in params.yaml; see SynthConfig for each reference).

    area: (median, sigma of ln) of the foreground's area fraction (log-normal), kept within ``area_range``;
    centre: (mean x, mean y, sd) of the region's centre of mass, as fractions of the width and height;
    max_zoom: a crop keeps at least ``1 / max_zoom`` of the image's side; max_border: the largest fraction of a
    crop's edge the region may cover (an object inside the frame, not sky or road); retouch_share: the share of composites
    made by :func:`_retouch` (the others by a colour-transfer method); shift: (min, max) |Delta E| in Lab between
    the region's mean colour before and after; ring_de: (min, max) |Delta E| between the composite's region and its
    surrounding ring (:func:`dirl.data.compare.ring_mask`); same_category: references of the region's category
    (:func:`category_key`) when any exists; foreign: extra composites per photo on another photo's object outline
    (:func:`imitate_foreign`).
    """

    area: tuple[float, float] = (0.22, 0.62)
    area_range: tuple[float, float] = (0.03, 0.5)
    centre: tuple[float, float, float] = (0.5, 0.52, 0.1)
    max_zoom: float = 2.5
    max_border: float = 1.0
    retouch_share: float = 0.3
    shift: tuple[float, float] = (5.0, 20.0)
    ring_de: tuple[float, float] = (8.0, 50.0)
    same_category: bool = True
    methods: tuple[str, ...] = TRANSFER_METHODS
    foreign: int = 0


_VIEW_WORDS = {"left", "right", "side", "back", "front", "rear", "view", "occluded", "part", "crop", "whole"}


def category_key(label: str | None) -> str | None:
    """A coarse category from a free-text region label (LabelMe's ``objects.json``): lower case, camelCase split,
    view words (left, side, ...) and tokens with digits dropped, the last word kept and made singular.
    ``carLeft`` -> ``car``, ``car side az180deg`` -> ``car``, ``trees`` -> ``tree``, ``snowy mountain`` ->
    ``mountain``. None stays None."""
    if not label:
        return None
    import re

    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", label).lower().replace("_", " ").replace("-", " ").split()
    words = [w for w in words if w not in _VIEW_WORDS and not any(ch.isdigit() for ch in w)] or [label.lower()]
    w = words[-1]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


def _box_sums(sat: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


AREA_WEIGHT = 3.0  # target_crop: the area is matched this many times more tightly than the centre (in sd units)


def crop_tables(mask: np.ndarray) -> list[np.ndarray]:
    """Summed-area tables of the mask, of mask * (x + 0.5) and of mask * (y + 0.5), each (H + 1, W + 1); then the
    mask's running sums along each row (H, W + 1) and along each column (H + 1, W), for a window's edges."""
    m = mask.astype(np.float64)
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    sats = [np.pad(np.cumsum(np.cumsum(v, 0), 1), ((1, 0), (1, 0))) for v in (m, m * (xx + 0.5), m * (yy + 0.5))]
    return sats + [np.pad(np.cumsum(m, 1), ((0, 0), (1, 0))), np.pad(np.cumsum(m, 0), ((1, 0), (0, 0)))]


def _edge_fraction(rows: np.ndarray, cols: np.ndarray, y0, x0, ch: int, cw: int) -> np.ndarray:
    """The fraction of each window's edge pixels inside the mask (``rows``/``cols``: :func:`crop_tables`' last two)."""
    y1, x1 = y0 + ch - 1, x0 + cw - 1
    top = rows[y0, x0 + cw] - rows[y0, x0]
    bottom = rows[y1, x0 + cw] - rows[y1, x0]
    left = cols[y0 + ch, x0] - cols[y0, x0]
    right = cols[y0 + ch, x1] - cols[y0, x1]
    return (top + bottom + left + right) / (2 * cw + 2 * ch)


def target_crop(
    mask: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float] = Imitation.area,
    area_range: tuple[float, float] = Imitation.area_range,
    centre: tuple[float, float, float] = Imitation.centre,
    max_zoom: float = Imitation.max_zoom,
    steps: int = 12,
    tables: list[np.ndarray] | None = None,
    area_weight: float = AREA_WEIGHT,
    max_border: float = Imitation.max_border,
) -> tuple[int, int, int, int] | None:
    """A crop window ``(y0, x0, h, w)`` of the image (same aspect) in which the region's area and centre come
    closest to a target drawn from the target distribution.

    The target: area ``exp(N(ln median, sigma))`` clipped to ``area_range``, centre ``N((mx, my), sd)`` clipped to
    [0.1, 0.9]. Candidates: ``steps`` window scales from ``1 / max_zoom`` to 1 times ``steps`` x ``steps`` positions;
    each one's visible area and centre come from summed-area tables. The chosen window minimises
    ``(area_weight ln(a / a*) / sigma)^2 + ((cx - cx*) / sd)^2 + ((cy - cy*) / sd)^2`` among windows whose visible
    area is within ``area_range`` and whose edge the region covers at most ``max_border`` of (the whole image when none
    is and ``max_border`` is 1; None when ``max_border`` < 1 and no window keeps the region inside the frame): the area
    comes first (a region at the frame's edge cannot be centred without zooming in on it), the centre as close as that
    area allows. ``tables``: :func:`crop_tables` of ``mask``, when several crops of one mask are drawn.
    """
    h, w = mask.shape
    med, sigma = area
    mx, my, sd = centre
    a_t = float(np.clip(np.exp(rng.normal(np.log(med), sigma)), *area_range))
    cx_t, cy_t = (float(np.clip(rng.normal(c, sd), 0.1, 0.9)) for c in (mx, my))
    sats = crop_tables(mask) if tables is None else tables
    best: tuple[int, int, int, int] | None = (0, 0, h, w) if max_border >= 1.0 else None
    best_score = np.inf
    for z in np.linspace(1.0 / max(max_zoom, 1.0), 1.0, steps):
        ch, cw = max(1, int(round(z * h))), max(1, int(round(z * w)))
        ys = np.unique(np.linspace(0, h - ch, steps).round().astype(int))
        xs = np.unique(np.linspace(0, w - cw, steps).round().astype(int))
        y0, x0 = (g.ravel() for g in np.meshgrid(ys, xs, indexing="ij"))
        cnt = _box_sums(sats[0], y0, x0, y0 + ch, x0 + cw)
        ok = cnt > 0
        if not ok.any():
            continue
        frac = cnt / (ch * cw)
        with np.errstate(divide="ignore", invalid="ignore"):
            cx = (_box_sums(sats[1], y0, x0, y0 + ch, x0 + cw) / cnt - x0) / cw
            cy = (_box_sums(sats[2], y0, x0, y0 + ch, x0 + cw) / cnt - y0) / ch
            score = (area_weight * np.log(frac / a_t) / sigma) ** 2 + ((cx - cx_t) / sd) ** 2 + ((cy - cy_t) / sd) ** 2
        bad = ~ok | (frac < area_range[0]) | (frac > area_range[1])
        if max_border < 1.0:
            bad |= _edge_fraction(sats[3], sats[4], y0, x0, ch, cw) > max_border
        score[bad] = np.inf
        i = int(np.argmin(score))
        if score[i] < best_score:
            best_score, best = score[i], (int(y0[i]), int(x0[i]), ch, cw)
    return best


def fits_frame(mask: np.ndarray, opts: Imitation, tables: list[np.ndarray] | None = None) -> bool:
    """Whether some crop (``opts.max_zoom``, ``opts.area_range``) keeps the region within ``opts.max_border`` of its
    edge: a sky or a road that fills the frame's top or bottom at every zoom does not (the answer does not depend on
    the drawn target, so one call decides for every composite of the photo)."""
    if opts.max_border >= 1.0:
        return True
    rng = np.random.default_rng(0)
    return (
        target_crop(
            mask, rng, opts.area, opts.area_range, opts.centre, opts.max_zoom, tables=tables, max_border=opts.max_border
        )
        is not None
    )


def apply_crop(image: np.ndarray, mask: np.ndarray, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image`` and ``mask`` to ``window`` (y0, x0, h, w) and enlarge both back to the image's size (the
    image bicubically; the mask bilinearly, thresholded at 0.5)."""
    y0, x0, ch, cw = window
    h, w = mask.shape
    if (y0, x0, ch, cw) == (0, 0, h, w):
        return image, mask
    img = image[y0 : y0 + ch, x0 : x0 + cw]
    msk = mask[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    msk = (cv2.resize(msk, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    return img, msk


def realism_check(
    image: np.ndarray,
    composite: np.ndarray,
    mask: np.ndarray,
    shift: tuple[float, float] = Imitation.shift,
    ring_de: tuple[float, float] = Imitation.ring_de,
) -> tuple[bool, str]:
    """The realism filter: reject a composite whose change is invisible or implausibly large.

    ``shift`` = |Delta E| (CIE Lab) between the region's mean colour in the composite and in the image: below
    ``shift[0]`` the change is invisible, above ``shift[1]`` implausible. ``ring`` = |Delta E| between the
    composite's region and the ring of background around it (:func:`dirl.data.compare.ring_mask`) must lie in
    ``ring_de``. Returns ``(ok, reason)``.
    """
    m = mask.astype(bool)
    c = lab(composite)
    fg = c[m].mean(axis=0)
    d_shift = float(np.linalg.norm(fg - lab(image)[m].mean(axis=0)))
    if d_shift < shift[0]:
        return False, f"invisible: region shift {d_shift:.1f} < {shift[0]} Delta E"
    if d_shift > shift[1]:
        return False, f"implausible: region shift {d_shift:.1f} > {shift[1]} Delta E"
    rg = ring_mask(m)
    if rg.any():
        d_ring = float(np.linalg.norm(fg - c[rg].mean(axis=0)))
        if not ring_de[0] <= d_ring <= ring_de[1]:
            return False, f"ring: region vs ring {d_ring:.1f} outside [{ring_de[0]}, {ring_de[1]}] Delta E"
    return True, "ok"


def predicted_shift(image: np.ndarray, mask: np.ndarray, ref: ReferenceLike) -> float:
    """|Delta E| between the mean Lab colour of ``image``'s region and of ``ref``'s region: what a colour transfer
    from ``ref`` moves the region's mean by (each of :data:`TRANSFER_METHODS` maps the region's mean onto the
    reference's, up to clipping: measured ratio 1.00, correlation >= 0.987 with the composite's shift)."""
    m, rm = mask.astype(bool), ref.mask.astype(bool)
    a = lab(_strided(image[m])[:, None, :]).reshape(-1, 3).mean(axis=0)  # (3,)
    b = lab(_strided(ref.image[rm])[:, None, :]).reshape(-1, 3).mean(axis=0)  # (3,)
    return float(np.linalg.norm(a - b))


def _checked_composite(
    base, region, method, rng, pool, key, opts, min_change, max_clipped, rejected
) -> tuple[Composite, dict] | None:
    """Recolour ``region`` of ``base`` by ``method`` and apply both filters (:func:`quality_check`,
    :func:`realism_check`): the composite and its parameters, or None (the reason counted in ``rejected``).

    A colour transfer whose reference is so far from the region that the composite could not pass the realism
    filter (:func:`predicted_shift` above ``opts.shift[1] + SHIFT_SLACK``) is rejected before it is made, for the
    same reason: the accepted composites follow the same distribution, at a fraction of the work (about three in
    four transfer tries of the ``iharmony4-like`` recipe on LabelMe are rejected as implausible)."""
    ref = pick_reference(pool, key, rng) if method in TRANSFER_METHODS else None
    if ref is not None and predicted_shift(base, region, ref) > opts.shift[1] + SHIFT_SLACK:
        rejected[f"{method}: implausible"] += 1
        return None
    comp, params, ref, seed = _transfer(base, region, method, pool, key, rng, ref=ref)
    ok, reason = quality_check(base, comp, region, min_change, max_clipped)
    if ok:
        ok, reason = realism_check(base, comp, region, opts.shift, opts.ring_de)
    if not ok:
        rejected[f"{method}: {reason.split(':')[0]}"] += 1
        return None
    params.update(seed=seed, same_category=ref is not None and key is not None and ref.category == key)
    return Composite(comp, method, None if ref is None else ref.id, params), params


def _imitation_try(
    image, mask, tables, method, rng, pool, key, opts, recolour, min_change, max_clipped, rejected
) -> tuple[Composite, np.ndarray, np.ndarray] | None:
    """One try of :func:`imitate_iharmony4`: the composite, its region and base image, or None (reason counted)."""
    window = target_crop(
        mask, rng, opts.area, opts.area_range, opts.centre, opts.max_zoom, tables=tables, max_border=opts.max_border
    )
    if window is None:
        rejected["crop: region on the frame's edge"] += 1
        return None
    base, region = apply_crop(image, mask, window)
    if not region.any():
        rejected["crop: empty region"] += 1
        return None
    if recolour > 0 and rng.random() < recolour:
        base = recolour_image(base, rng)
    made = _checked_composite(base, region, method, rng, pool, key, opts, min_change, max_clipped, rejected)
    if made is None:
        return None
    made[1]["crop"] = list(window)
    return made[0], region, base


def imitate_iharmony4(
    image: np.ndarray,
    mask: np.ndarray,
    n: int,
    rng: np.random.Generator,
    refs: Sequence[Reference] = (),
    category: str | None = None,
    image_id: str | None = None,
    opts: Imitation = Imitation(),
    max_tries: int = 20,
    recolour: float = 0.0,
    min_change: float = MIN_CHANGE,
    max_clipped: float = MAX_CLIPPED,
) -> list[tuple[Composite, np.ndarray, np.ndarray]]:
    """``n`` composites made the way iHarmony4 made its own, each as ``(composite, region mask, base image)``.

    Per composite: a crop of the photo whose region matches the target area and centre (:func:`target_crop`);
    the base image is that crop, globally recoloured (:func:`recolour_image`) with probability ``recolour``; then
    ``retouch`` with probability ``opts.retouch_share`` (drawn once per composite: its retries keep the method),
    else a colour-transfer method drawn uniformly from
    ``opts.methods`` with a reference region of the same category (:func:`category_key`, when
    ``opts.same_category`` and any has it; never the photo itself). A try must pass :func:`quality_check` and
    :func:`realism_check`; up to ``max_tries`` tries per composite (the shortfall is logged).
    """
    pool = [r for r in refs if image_id is None or r.id != image_id]
    key = category_key(category) if opts.same_category else None
    if opts.same_category:
        pool = [Reference(r.id, r.image, r.mask, category_key(r.category)) for r in pool]
    tables = crop_tables(mask)
    return _fill_slots(
        n,
        rng,
        opts,
        max_tries,
        lambda method, rejected: _imitation_try(
            image, mask, tables, method, rng, pool, key, opts, recolour, min_change, max_clipped, rejected
        ),
        "imitate_iharmony4",
        image_id,
    )


def _fill_slots(
    n: int,
    rng: np.random.Generator,
    opts: Imitation,
    max_tries: int,
    attempt: Callable[[str, Counter[str]], _Made | None],
    where: str,
    image_id: str | None,
) -> list[_Made]:
    """``n`` slots, each filled by up to ``max_tries`` calls of ``attempt(method, rejected)`` (None = rejected, the
    reason counted in ``rejected``); the method is drawn once per slot (``retouch`` with probability
    ``opts.retouch_share``, else one of ``opts.methods``), so that the filters do not change the methods' shares.
    A shortfall is logged under ``where``."""
    out: list[_Made] = []
    rejected: Counter[str] = Counter()
    tries = 0
    for _ in range(n):
        method = "retouch" if rng.random() < opts.retouch_share else opts.methods[int(rng.integers(len(opts.methods)))]
        for _ in range(max_tries):
            tries += 1
            made = attempt(method, rejected)
            if made is not None:
                out.append(made)
                break
    if len(out) < n:
        _log_shortfall(where, image_id, len(out), n, tries, rejected)
    return out


def foreign_region(
    shape: np.ndarray, h: int, w: int, rng: np.random.Generator, opts: Imitation = Imitation()
) -> np.ndarray:
    """Another photo's object mask ``shape`` as a region of an ``h`` x ``w`` frame: cut to its bounding box,
    mirrored with probability 1/2, scaled (aspect kept) to an area drawn as :func:`target_crop` draws it
    (``opts.area`` within ``opts.area_range``), its box centred on a point drawn from ``opts.centre`` and moved to lie
    inside the frame. The region is an object's outline but no object of this photo: only its changed colour marks
    it, so a model trained on it cannot find it by looking for an object. uint8 {0, 1}, (h, w)."""
    ys, xs = np.nonzero(shape)
    if ys.size == 0:
        raise ValueError("foreign_region: the shape mask is empty")
    box = shape[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)  # (bh, bw)
    if rng.random() < 0.5:
        box = box[:, ::-1]
    med, sigma = opts.area
    a_t = float(np.clip(np.exp(rng.normal(np.log(med), sigma)), *opts.area_range))
    scale = np.sqrt(a_t * h * w / (float(box.mean()) * box.size))  # object pixels = a_t * h * w
    scale = min(scale, h / box.shape[0], w / box.shape[1])  # the whole box inside the frame
    bh, bw = max(1, round(box.shape[0] * scale)), max(1, round(box.shape[1] * scale))
    cx, cy = (float(np.clip(rng.normal(c, opts.centre[2]), 0.1, 0.9)) for c in opts.centre[:2])
    x0 = int(np.clip(round(cx * w - bw / 2), 0, w - bw))
    y0 = int(np.clip(round(cy * h - bh / 2), 0, h - bh))
    region = np.zeros((h, w), np.uint8)
    region[y0 : y0 + bh, x0 : x0 + bw] = (
        cv2.resize(np.ascontiguousarray(box), (bw, bh), interpolation=cv2.INTER_LINEAR) > 0.5
    )
    return region


def imitate_foreign(
    image: np.ndarray,
    n: int,
    rng: np.random.Generator,
    shapes: Sequence[Reference],
    refs: Sequence[Reference] = (),
    image_id: str | None = None,
    opts: Imitation = Imitation(),
    max_tries: int = 20,
    recolour: float = 0.0,
    min_change: float = MIN_CHANGE,
    max_clipped: float = MAX_CLIPPED,
) -> list[tuple[Composite, np.ndarray, np.ndarray]]:
    """``n`` composites of ``image`` whose region is another photo's object outline (:func:`foreign_region`, the
    outline drawn from ``shapes``, never this photo's own), each as ``(composite, region mask, base image)``.

    As :func:`imitate_iharmony4` otherwise: the base globally recoloured with probability ``recolour``, retouch with
    probability ``opts.retouch_share`` else a colour-transfer method of ``opts.methods`` with a reference of any
    category (the region is of no category), both filters, up to ``max_tries`` tries per composite.
    """
    shapes = [s for s in shapes if (image_id is None or s.id != image_id) and s.mask.any()]
    pool = [r for r in refs if image_id is None or r.id != image_id]
    h, w = image.shape[:2]

    def attempt(method: str, rejected: Counter[str]) -> _Made | None:
        shape = shapes[int(rng.integers(len(shapes)))]
        region = foreign_region(shape.mask, h, w, rng, opts)
        base = recolour_image(image, rng) if recolour > 0 and rng.random() < recolour else image
        made = _checked_composite(base, region, method, rng, pool, None, opts, min_change, max_clipped, rejected)
        if made is None:
            return None
        made[1]["shape"] = shape.id
        return made[0], region, base

    return _fill_slots(n if shapes else 0, rng, opts, max_tries, attempt, "imitate_foreign", image_id)
