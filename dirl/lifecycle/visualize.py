"""Figures of the evaluation: the qualitative grid, the MDA attention maps and a note figure.

- :func:`grid_figure`: one row per item; columns image | ground truth | one map per model (the paper's
  qualitative figure). Each map carries its IoU against the ground truth.
- :func:`mda_figure`: image | ground truth | A0 .. A4 (the five mask-guided attention maps) | final map.
- :func:`note_figure`: a figure that holds only a sentence, written where a figure does not apply (a model
  without attention maps) so that the pipeline's declared plot output still exists and says why.
Figures are written atomically (temp file + rename) with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

CELL_INCHES = 1.6


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` atomically and close it."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _iou(prob: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the normalised map binarised at 0.5 (the evaluation's rule) against a {0, 1} mask, x100."""
    from dirl.metrics import per_image_metrics

    return float(per_image_metrics(prob[None], mask[None])["iou"][0] * 100)


def _show(ax, img: np.ndarray, title: str | None = None, gray: bool = False) -> None:
    ax.imshow(img, cmap="gray" if gray else None, vmin=0.0 if gray else None, vmax=1.0 if gray else None,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def grid_figure(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]],
                ids: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Rows = items; columns image (RGB uint8) | ground truth ({0,1}) | each entry of ``maps`` (label -> maps).

    All arrays of a row must share one size (resize before calling). Each map is titled with its IoU.
    """
    plt = _plt()
    labels = list(maps)
    n, cols = len(images), 2 + len(labels)
    if n == 0:
        return note_figure("no items to show", path)
    fig, axes = plt.subplots(n, cols, figsize=(CELL_INCHES * cols, CELL_INCHES * n + 0.4), squeeze=False)
    for r in range(n):
        _show(axes[r, 0], images[r], "image" if r == 0 else None)
        axes[r, 0].set_ylabel(str(ids[r])[:24], fontsize=6)
        _show(axes[r, 1], masks[r].astype(np.float32), "ground truth" if r == 0 else None, gray=True)
        for c, label in enumerate(labels):
            m = maps[label][r]
            head = f"{label}\n" if r == 0 else ""
            _show(axes[r, 2 + c], m, f"{head}IoU {_iou(m, masks[r]):.1f}", gray=True)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def mda_figure(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], outputs: Sequence[Sequence[np.ndarray]],
               ids: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """image | ground truth | A0 .. A4 | final, for model outputs ordered [final, A4, A3, A2, A1, A0]."""
    plt = _plt()
    n, cols = len(images), 8
    fig, axes = plt.subplots(n, cols, figsize=(CELL_INCHES * cols, CELL_INCHES * n + 0.4), squeeze=False)
    for r in range(n):
        final, a4, a3, a2, a1, a0 = outputs[r][:6]
        _show(axes[r, 0], images[r], "image" if r == 0 else None)
        axes[r, 0].set_ylabel(str(ids[r])[:24], fontsize=6)
        _show(axes[r, 1], masks[r].astype(np.float32), "ground truth" if r == 0 else None, gray=True)
        for c, (name, a) in enumerate([("A0", a0), ("A1", a1), ("A2", a2), ("A3", a3), ("A4", a4), ("final", final)]):
            _show(axes[r, 2 + c], a, name if r == 0 else None, gray=True)
    fig.suptitle(title or "mask-guided dual attention maps (A0 full resolution .. A4 coarsest)", fontsize=9)
    return save_figure(fig, path)


def note_figure(text: str, path: str | os.PathLike) -> Path:
    """A small figure holding only ``text``."""
    plt = _plt()
    fig = plt.figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    return save_figure(fig, path)
