"""Region shapes that any photo can yield, with or without an object mask: the built-in sample's views and the
synthesis stage's free-form composites use them (kept apart from the colour transfers of ``synth.py``)."""

from __future__ import annotations

import cv2
import numpy as np

FREE_FORM_AREA = (0.05, 0.4)  # free-form regions cover this fraction of the image


def free_form_mask(h: int, w: int, rng: np.random.Generator, area: tuple[float, float] = FREE_FORM_AREA) -> np.ndarray:
    """A random free-form region (one smooth, connected blob anywhere in the frame): (h, w) uint8 {0, 1}.

    Low-frequency noise (a random 3-6 cell grid, bicubically up-sampled) plus a Gaussian bump at a random
    centre is thresholded at the quantile that gives an area drawn from ``area``; the largest connected
    component is kept and its holes filled. Lets any photo, even one without an object mask, yield composites
    whose inharmonious region is not where a centred prior would look.
    """
    cells = int(rng.integers(3, 7))
    noise = cv2.resize(
        rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )  # (h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    sy, sx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = noise + 2.5 * np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    target = rng.uniform(*area)
    m = (field > np.quantile(field, 1.0 - target)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n > 2:  # keep the largest blob
        m = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    holes = np.pad(1 - m, 1, constant_values=1)
    cv2.floodFill(holes, None, (0, 0), 0)
    return m | holes[1:-1, 1:-1]
