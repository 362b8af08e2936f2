"""Figures of the evaluation: the qualitative grid, the MDA attention maps and a note figure.

- :func:`grid_figure`: one row per item: the composite with its ground-truth outline, then each map (a model's,
  the centred prior's) as a heat overlay on the image, min-max normalised as the metrics score it, with the
  ground-truth outline (solid) and the region the map predicts (normalised map > 0.5, dashed); each titled with
  its IoU. The centred prior is added when ``maps`` has no prior of its own.
- :func:`mda_figure`: the composite | A0 .. A4 (the five mask-guided attention maps) | final map, each map a heat
  overlay scaled to its own range (min .. max) with a colour bar that shows that range: the attention maps of a
  model span a narrow range around 0.5, which a fixed 0-1 scale draws as flat grey.
- :func:`pick_distinct`: which items to show: distinct photos, spread over the subsets.
- :func:`note_figure`: a figure that holds only a sentence, written where a figure does not apply (a model
  without attention maps) so that the pipeline's declared plot output still exists and says why.

Figures are drawn with the non-interactive Agg backend at ``DPI`` with matplotlib's constrained layout (so a
panel's place in the PNG is its axes' window extent: ``draw_grid`` / ``draw_mda`` return the axes), and
written atomically (``dirl.io.atomic_path``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from dirl.data.show import photo_of, spread_pick
from dirl.io import atomic_path

CELL_INCHES = 1.9
DPI = 110
HEAT_CMAP = "inferno"
HEAT_ALPHA = 0.6  # weight of the heat colour over the (grey) image
GT_COLOR = "cyan"  # stands out on every colour of inferno and on most photos
PRED_COLOR = "white"  # drawn where the normalised map is 0.5: inferno's orange-red there
PRIOR_LABEL = "centre prior"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = DPI, tight: bool = False) -> Path:
    """Save a matplotlib figure to ``path`` atomically (PNG unless the suffix says otherwise) and close it."""
    plt = _plt()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=(path.suffix.lstrip(".") or "png"),
                        bbox_inches="tight" if tight else None, facecolor="white")
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- which items


def pick_distinct(ids: Sequence[str], subsets: Sequence[str] | None = None, n: int = 6, seed: int = 0, *,
                  photos: Sequence[str] | None = None) -> list[int]:
    """Indices of ``n`` items from distinct photos, spread over ``subsets`` (parallel to ``ids``; None = one).

    The photo of an item is ``photos[i]`` when given, else :func:`dirl.data.show.photo_of` of its id
    (``<photo>__<item>`` for sample / photo-folder items, the name before the first ``_`` for iHarmony4 ids such
    as ``HCOCO/c12345_1_3``). One item per photo until every photo is shown, the subsets taking turns; only
    then a photo again. Deterministic for a ``seed``; indices in pick order.
    """
    ids = [str(i) for i in ids]
    photo = [str(p) for p in photos] if photos is not None else [photo_of(i) for i in ids]
    subset = [str(s) for s in subsets] if subsets is not None else [""] * len(ids)
    if not len(photo) == len(subset) == len(ids):
        raise ValueError(f"pick_distinct: {len(ids)} ids, {len(subset)} subsets and {len(photo)} photos differ")
    if not ids or n <= 0:
        return []
    # level 1: photos shown least often (all distinct while any is unshown); level 2: the subset shown least often
    return spread_pick([photo, subset], n, seed)


# ----------------------------------------------------------------------------- drawing helpers


def _iou(prob: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the normalised map binarised at 0.5 (the evaluation's rule) against a {0, 1} mask, x100."""
    from dirl.metrics import per_image_metrics

    return float(per_image_metrics(prob[None], mask[None])["iou"][0] * 100)


def _fit_to(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    m = np.asarray(m, np.float32)
    if m.shape == shape:
        return m
    return cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _grey(image: np.ndarray) -> np.ndarray:
    """The image as grey RGB floats in [0, 1] (the heat colours stand out on it)."""
    rgb = np.asarray(image, np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    g = rgb @ np.array([0.299, 0.587, 0.114], np.float32) if rgb.ndim == 3 else rgb
    return np.repeat(g[..., None], 3, axis=2)


def heat_overlay(image: np.ndarray, m: np.ndarray, vmin: float, vmax: float, cmap: str = HEAT_CMAP,
                 alpha: float = HEAT_ALPHA) -> np.ndarray:
    """``m`` coloured by ``cmap`` over [vmin, vmax], alpha-blended over the grey image: (H, W, 3) float [0, 1]."""
    import matplotlib

    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((_fit_to(m, image.shape[:2]) - vmin) / span, 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](t)[..., :3]
    return (1 - alpha) * _grey(image) + alpha * heat


def _stroke():
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2.6, foreground="black")]


def _outline(ax, field: np.ndarray, color: str, style: str = "solid", width: float = 1.3) -> None:
    """Contour of ``field`` at 0.5 (nothing when it does not cross 0.5); dashed lines get a dark edge."""
    field = np.asarray(field, np.float32)
    if field.size and field.min() < 0.5 < field.max():
        cs = ax.contour(field, levels=[0.5], colors=[color], linestyles=style, linewidths=width)
        if style != "solid":
            cs.set_path_effects(_stroke())


def _bare(ax, title: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def wrap_id(text: str, width: int = 22) -> str:
    """``text`` on lines of at most ``width`` characters, broken after ``/ _ - .`` where possible; nothing cut."""
    lines, line = [], ""
    for tok in [t for t in re.split(r"(?<=[/_\-. ])", str(text)) if t]:
        while len(tok) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(tok[:width])
            tok = tok[width:]
        if len(line) + len(tok) > width:
            lines.append(line)
            line = ""
        line += tok
    if line:
        lines.append(line)
    return "\n".join(lines)


def _range_ticks(lo: float, hi: float) -> tuple[list[float], str]:
    """Colour-bar ticks (min, mid, max) and a format with enough decimals to tell them apart."""
    span = hi - lo
    decimals = 2 if span <= 0 else min(6, max(2, math.ceil(-math.log10(span)) + 1))
    return [lo, (lo + hi) / 2, hi], f"%.{decimals}f"


def _colorbar(fig, ax, lo: float, hi: float, cmap: str = HEAT_CMAP, label: str | None = None):
    import matplotlib

    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, hi), cmap=cmap)
    ticks, fmt = _range_ticks(lo, hi)
    cb = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, ticks=ticks, format=fmt)
    cb.ax.tick_params(labelsize=6, length=2)
    if label:
        cb.set_label(label, fontsize=6)
    return cb


def _legend(fig, pred_label: str | None = None) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=GT_COLOR, lw=1.5, label="ground truth (outline)")]
    if pred_label:
        handles.append(Line2D([], [], color=PRED_COLOR, lw=1.2, ls="--", label=pred_label, path_effects=_stroke()))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False)


# ----------------------------------------------------------------------------- the grid



def _image_panel(ax, image, mask, item_id: str, r: int, panels: dict) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 of a row: the composite with the ground-truth outline, labelled with the item's id."""
    image, mask = np.asarray(image), np.asarray(mask).astype(np.float32)
    ax.imshow(image, interpolation="nearest")
    _outline(ax, mask, GT_COLOR)
    _bare(ax, "composite + ground truth" if r == 0 else None)
    ax.set_ylabel(wrap_id(item_id), fontsize=6)
    panels[(r, "image")] = ax
    return image, mask


def draw_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]],
              ids: Sequence[str], title: str = "", *, add_prior: bool = True):
    """The grid of :func:`grid_figure`, unsaved: ``(fig, panels)``, ``panels[(row, column)]`` the axes, columns
    ``"image"`` and the labels of the maps; ``panels[(row, label)].iou`` is the IoU drawn in its title."""
    from dirl.metrics import centre_prior, normalize_map

    plt = _plt()
    maps = dict(maps)
    if add_prior and not any("prior" in str(k).lower() for k in maps):
        maps[PRIOR_LABEL] = [centre_prior(*np.asarray(m).shape[:2]) for m in masks]
    labels = list(maps)
    n, cols = len(images), 1 + len(labels)
    fig, axes = plt.subplots(n, cols, figsize=(CELL_INCHES * cols + 0.9, CELL_INCHES * n + 0.8), squeeze=False,
                             dpi=DPI, layout="constrained")
    panels = {}
    for r in range(n):
        image, mask = _image_panel(axes[r, 0], images[r], masks[r], ids[r], r, panels)
        for c, label in enumerate(labels):
            raw = _fit_to(maps[label][r], mask.shape)
            norm = normalize_map(raw)
            ax = axes[r, 1 + c]
            ax.imshow(heat_overlay(image, norm, 0.0, 1.0), interpolation="nearest")
            _outline(ax, mask, GT_COLOR)
            _outline(ax, norm, PRED_COLOR, "dashed", 1.0)
            ax.iou = _iou(raw, mask)
            _bare(ax, f"{label}\nIoU {ax.iou:.1f}" if r == 0 else f"IoU {ax.iou:.1f}")
            panels[(r, label)] = ax
    if n:
        _colorbar(fig, axes[:, -1].tolist(), 0.0, 1.0, label="map, min-max normalised (as scored)")
        _legend(fig, "predicted region (normalised map > 0.5)")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig, panels


def grid_figure(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]],
                ids: Sequence[str], path: str | os.PathLike, title: str = "", *, add_prior: bool = True) -> Path:
    """Rows = items; columns: composite (RGB uint8) with the ground truth ({0,1}) outlined | each entry of
    ``maps`` (label -> one map per item) as a heat overlay, titled with its IoU | the centred prior's (added
    when no label of ``maps`` names a prior and ``add_prior``). Maps are resized to their item's size."""
    if len(images) == 0:
        return note_figure("no items to show", path)
    fig, _ = draw_grid(images, masks, maps, ids, title, add_prior=add_prior)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the MDA figure

MDA_NAMES = ("A0", "A1", "A2", "A3", "A4", "final")


def draw_mda(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], outputs: Sequence[Sequence[np.ndarray]],
             ids: Sequence[str], title: str = ""):
    """The figure of :func:`mda_figure`, unsaved: ``(fig, panels)``, ``panels[(row, name)]`` the axes for the
    names ``"image"``, ``A0`` .. ``A4``, ``final``; each map panel has ``.range`` = (min, max) of its map."""
    plt = _plt()
    n, cols = len(images), 1 + len(MDA_NAMES)
    fig, axes = plt.subplots(n, cols, figsize=(CELL_INCHES * 1.25 * cols, CELL_INCHES * n + 0.9), squeeze=False,
                             dpi=DPI, layout="constrained")
    panels = {}
    for r in range(n):
        image, mask = _image_panel(axes[r, 0], images[r], masks[r], ids[r], r, panels)
        final, a4, a3, a2, a1, a0 = outputs[r][:6]
        for c, (name, a) in enumerate(zip(MDA_NAMES, (a0, a1, a2, a3, a4, final))):
            a = _fit_to(a, mask.shape)
            lo, hi = float(a.min()), float(a.max())
            flat = not hi > lo
            ax = axes[r, 1 + c]
            ax.imshow(heat_overlay(image, a, lo, hi if not flat else lo + 1.0), interpolation="nearest")
            _outline(ax, mask, GT_COLOR)
            ax.range = (lo, hi)
            head = f"{name}" + (f" (flat: {lo:.3g})" if flat else "")
            _bare(ax, head if r == 0 or flat else None)
            _colorbar(fig, ax, lo, hi if not flat else lo + 1e-6)
            panels[(r, name)] = ax
    if n:
        _legend(fig)
    fig.suptitle(title or "mask-guided dual attention maps (A0 full resolution .. A4 coarsest), each on its own "
                          "scale: min .. max of the map", fontsize=9)
    return fig, panels


def mda_figure(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], outputs: Sequence[Sequence[np.ndarray]],
               ids: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """composite + ground truth | A0 .. A4 | final, for model outputs ordered [final, A4, A3, A2, A1, A0]; each
    map a heat overlay on its own min..max scale, with its colour bar."""
    if len(images) == 0:
        return note_figure("no items to show", path)
    fig, _ = draw_mda(images, masks, outputs, ids, title)
    return save_figure(fig, path)


def note_figure(text: str, path: str | os.PathLike) -> Path:
    """A small figure holding only ``text``."""
    plt = _plt()
    fig = plt.figure(figsize=(6, 1.2), dpi=DPI)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    return save_figure(fig, path, tight=True)
