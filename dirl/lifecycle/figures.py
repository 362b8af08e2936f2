"""Figures of the evaluation: the qualitative grid, the MDA attention maps, the PR curve and a note figure.

- :func:`grid_figure`: one row per item: the composite with its ground-truth outline, then each map (a model's,
  the centred prior's) as a heat overlay on the image, min-max normalised as the metrics score it, with the
  ground-truth outline (solid) and the region the map predicts (normalised map > 0.5, dashed); each with its IoU
  written inside the panel, the set's headline scores under the title. The centred prior is added when ``maps``
  has no prior of its own.
- :func:`mda_figure`: the composite | A0 .. A4 (the five mask-guided attention maps) | final map, each map a heat
  overlay scaled to its own range (min .. max) with a colour bar that shows that range: the attention maps of a
  model span a narrow range around 0.5, which a fixed 0-1 scale draws as flat grey.
- :func:`pick_distinct`: which items to show: distinct photos, spread over the subsets.
- :func:`quantile_pick`: which items the evaluation grid shows: those at quantiles of the per-image model IoU
  (best, upper quartile, median, lower quartile, worst for five rows), so that the grid is a fair sample.
- :func:`pr_figure`: the pixel-level precision-recall curve of the model beside the centred prior's.
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dirl.data.show import photo_of, spread_pick
from dirl.io import atomic_path
from dirl.metrics import centre_prior, normalize_map, per_image_metrics

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
            fig.savefig(
                tmp,
                dpi=dpi,
                format=(path.suffix.lstrip(".") or "png"),
                bbox_inches="tight" if tight else None,
                facecolor="white",
            )
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- which items


def pick_distinct(
    ids: Sequence[str],
    subsets: Sequence[str] | None = None,
    n: int = 6,
    seed: int = 0,
    *,
    photos: Sequence[str] | None = None,
) -> list[int]:
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


def quantile_name(q: float) -> str:
    """The name of a quantile of per-image scores (1 = the highest): best, upper quartile, median, lower
    quartile, worst, else ``80th percentile``."""
    pct = round(q * 100)
    names = {100: "best", 75: "upper quartile", 50: "median", 25: "lower quartile", 0: "worst"}
    if pct in names:
        return names[pct]
    suffix = "th" if 10 <= pct % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(pct % 10, "th")
    return f"{pct}{suffix} percentile"


def quantile_pick(scores: Sequence[float], n: int = 5, photos: Sequence[str] | None = None) -> list[tuple[int, str]]:
    """``n`` items at evenly spaced quantiles of ``scores`` (per-image IoU), from the best to the worst:
    ``[(index, name)]`` with names from :func:`quantile_name` (n = 5: best, upper quartile, median, lower
    quartile, worst). Each quantile takes the item of its rank, or the nearest rank whose photo (``photos``,
    parallel to ``scores``) is not shown yet and that is not picked yet; deterministic (ties by index)."""
    scores = [float(v) for v in scores]
    if not scores or n <= 0:
        return []
    n = min(n, len(scores))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # rank 0 = the best
    qs = [1.0] if n == 1 else [1.0 - j / (n - 1) for j in range(n)]
    taken: set[int] = set()
    shown: set[str] = set()
    picks = []
    for q in qs:
        target = round((1.0 - q) * (len(order) - 1))
        by_distance = sorted(range(len(order)), key=lambda r: (abs(r - target), r))
        free = [r for r in by_distance if order[r] not in taken]
        fresh = [r for r in free if photos is None or str(photos[order[r]]) not in shown]
        rank = (fresh or free)[0]
        i = order[rank]
        taken.add(i)
        if photos is not None:
            shown.add(str(photos[i]))
        picks.append((i, quantile_name(q)))
    return picks


def headline_text(model: dict, prior: dict | None = None, name: str = "model") -> str:
    """``model: AP 45.10  F1 0.4123  IoU 30.20 (n images)`` and, on a second line, the centred prior's, of
    ``{AP, F1, IoU, n}`` dicts (a set's scores)."""

    def one(label: str, m: dict) -> str:
        return f"{label}: AP {m['AP']:.2f}  F1 {m['F1']:.4f}  IoU {m['IoU']:.2f}"

    text = one(name, model) + (f" ({model['n']} images)" if model.get("n") is not None else "")
    return text + (f"\n{one(PRIOR_LABEL, prior)} (the same images)" if prior else "")


# ----------------------------------------------------------------------------- drawing helpers


def _iou(prob: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the normalised map binarised at 0.5 (the evaluation's rule) against a {0, 1} mask, x100."""
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


def heat_overlay(
    image: np.ndarray, m: np.ndarray, vmin: float, vmax: float, cmap: str = HEAT_CMAP, alpha: float = HEAT_ALPHA
) -> np.ndarray:
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


def label_inside(ax, text: str, where: str = "top") -> None:
    """``text`` inside the panel ``ax`` (top or bottom left corner), white on a dark box: it belongs to that
    panel alone. The text artist is kept as ``ax.inside`` (a list)."""
    y, va = (0.97, "top") if where == "top" else (0.03, "bottom")
    t = ax.text(
        0.03,
        y,
        text,
        transform=ax.transAxes,
        ha="left",
        va=va,
        fontsize=6.5,
        color="white",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.65, "linewidth": 0},
    )
    if not hasattr(ax, "inside"):
        ax.inside = []
    ax.inside.append(t)


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


def _image_panel(
    ax, image, mask, item_id: str, r: int, panels: dict, row_label: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 of a row: the composite with the ground-truth outline; the item's id is the row's heading (the
    axes' y label, at the row's left edge) and ``row_label`` (why the row is shown) sits inside the panel."""
    image, mask = np.asarray(image), np.asarray(mask).astype(np.float32)
    ax.imshow(image, interpolation="nearest")
    _outline(ax, mask, GT_COLOR)
    _bare(ax, "composite + ground truth" if r == 0 else None)
    ax.set_ylabel(wrap_id(item_id), fontsize=6)
    if row_label:
        label_inside(ax, row_label)
    panels[(r, "image")] = ax
    return image, mask


def draw_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    ids: Sequence[str],
    title: str = "",
    *,
    add_prior: bool = True,
    row_labels: Sequence[str] | None = None,
    headline: str = "",
):
    """The grid of :func:`grid_figure`, unsaved: ``(fig, panels)``, ``panels[(row, column)]`` the axes, columns
    ``"image"`` and the labels of the maps; ``panels[(row, label)].iou`` is the IoU written inside that panel
    (``.inside``: the text artists drawn in a panel). Column names head the first row only; ``row_labels`` (e.g.
    the quantile a row stands for) go inside the composite's panel; ``headline`` (the set's scores) is a line
    under ``title``."""

    plt = _plt()
    maps = dict(maps)
    if add_prior and not any("prior" in str(k).lower() for k in maps):
        maps[PRIOR_LABEL] = [centre_prior(*np.asarray(m).shape[:2]) for m in masks]
    labels = list(maps)
    n, cols = len(images), 1 + len(labels)
    fig, axes = plt.subplots(
        n, cols, figsize=(CELL_INCHES * cols + 0.9, CELL_INCHES * n + 0.8), squeeze=False, dpi=DPI, layout="constrained"
    )
    panels: dict = {}
    for r in range(n):
        image, mask = _image_panel(
            axes[r, 0], images[r], masks[r], ids[r], r, panels, row_labels[r] if row_labels is not None else None
        )
        for c, label in enumerate(labels):
            raw = _fit_to(maps[label][r], mask.shape)
            norm = normalize_map(raw)
            ax = axes[r, 1 + c]
            ax.imshow(heat_overlay(image, norm, 0.0, 1.0), interpolation="nearest")
            _outline(ax, mask, GT_COLOR)
            _outline(ax, norm, PRED_COLOR, "dashed", 1.0)
            ax.iou = _iou(raw, mask)
            _bare(ax, label if r == 0 else None)
            label_inside(ax, f"IoU {ax.iou:.1f}")
            panels[(r, label)] = ax
    if n:
        _colorbar(fig, axes[:, -1].tolist(), 0.0, 1.0, label="map, min-max normalised (as scored)")
        _legend(fig, "predicted region (normalised map > 0.5)")
    if title or headline:
        fig.suptitle("\n".join(t for t in (title, headline) if t), fontsize=8)
    return fig, panels


def grid_figure(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    ids: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    *,
    add_prior: bool = True,
    row_labels: Sequence[str] | None = None,
    headline: str = "",
) -> Path:
    """Rows = items; columns: composite (RGB uint8) with the ground truth ({0,1}) outlined | each entry of
    ``maps`` (label -> one map per item) as a heat overlay, its IoU inside the panel | the centred prior's (added
    when no label of ``maps`` names a prior and ``add_prior``). Maps are resized to their item's size. See
    :func:`draw_grid` for ``row_labels`` and ``headline``."""
    if len(images) == 0:
        return note_figure("no items to show", path)
    fig, _ = draw_grid(images, masks, maps, ids, title, add_prior=add_prior, row_labels=row_labels, headline=headline)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the PR curve

MODEL_COLOR = "tab:blue"
PRIOR_COLOR = "tab:orange"


def draw_pr(
    model: Sequence[dict],
    prior: Sequence[dict] | None = None,
    title: str = "",
    model_label: str = "model",
    model_ap: float | None = None,
    prior_ap: float | None = None,
):
    """Pixel-level precision against recall: ``(fig, ax)``. ``model`` / ``prior``: rows ``{threshold, precision,
    recall}`` (``pr_curve.csv`` / ``pr_prior.csv``); the model in blue, the centred prior in orange (dashed),
    each named in the legend with its AP (the mean per-image AP x100) when given."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2), dpi=DPI, layout="constrained")
    for rows, label, color, style, ap in (
        (model, model_label, MODEL_COLOR, "-", model_ap),
        (prior or [], PRIOR_LABEL, PRIOR_COLOR, "--", prior_ap),
    ):
        pts = [
            (float(r["recall"]), float(r["precision"]))
            for r in sorted(rows, key=lambda r: float(r["threshold"]))
            if np.isfinite(float(r["recall"])) and np.isfinite(float(r["precision"]))
        ]
        if pts:
            name = label + (f" (AP {ap:.2f})" if ap is not None else "")
            ax.plot(*zip(*pts), style, color=color, lw=1.6, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (pixels)")
    ax.set_ylabel("precision (pixels)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "precision-recall over thresholds of the normalised map", fontsize=9)
    if ax.lines:
        ax.legend(loc="upper right", fontsize=8)
    return fig, ax


def pr_figure(
    model: Sequence[dict], prior: Sequence[dict] | None, path: str | os.PathLike, title: str = "", **kwargs
) -> Path:
    """:func:`draw_pr` written to ``path`` (``pr_curve.png``)."""
    fig, _ = draw_pr(model, prior, title, **kwargs)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the MDA figure

MDA_NAMES = ("A0", "A1", "A2", "A3", "A4", "final")


def draw_mda(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    outputs: Sequence[Sequence[np.ndarray]],
    ids: Sequence[str],
    title: str = "",
):
    """The figure of :func:`mda_figure`, unsaved: ``(fig, panels)``, ``panels[(row, name)]`` the axes for the
    names ``"image"``, ``A0`` .. ``A4``, ``final``; each map panel has ``.range`` = (min, max) of its map."""
    plt = _plt()
    n, cols = len(images), 1 + len(MDA_NAMES)
    fig, axes = plt.subplots(
        n,
        cols,
        figsize=(CELL_INCHES * 1.25 * cols, CELL_INCHES * n + 0.9),
        squeeze=False,
        dpi=DPI,
        layout="constrained",
    )
    panels: dict = {}
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
    fig.suptitle(
        title
        or "mask-guided dual attention maps (A0 full resolution .. A4 coarsest), each on its own "
        "scale: min .. max of the map",
        fontsize=9,
    )
    return fig, panels


def mda_figure(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    outputs: Sequence[Sequence[np.ndarray]],
    ids: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
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
