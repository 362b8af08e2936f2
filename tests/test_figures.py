"""The pictures explain: which items they show (distinct photos), and what the PNGs hold (contrast, columns, labels).

Covers ``dirl.lifecycle.figures`` (evaluation grid, MDA attention maps, ``pick_distinct``) and
``dirl.data.show`` (``dirl data show``: ``sample_rows``, ``contact_sheet``). Each test renders a few small
figures on the CPU and reads the PNGs back with cv2.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from dirl.data.images import encode_jpeg, encode_png
from dirl.data.shards import ShardWriter, write_manifest
from dirl.data.show import (
    GAP,
    HEADER_H,
    LABEL_W,
    TILE,
    contact_sheet,
    photo_of,
    sample_rows,
    sheet_columns,
    show_sheet,
    spread_pick,
    wrap_label,
)
from dirl.lifecycle import figures

S = 64


def _item(k: int, size: int = S, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image (a gradient, or flat mid-grey) and a {0, 1} disc mask that moves with ``k``."""
    yy, xx = np.mgrid[0:size, 0:size]
    if flat:
        img = np.full((size, size, 3), 128, np.uint8)
    else:
        img = np.stack([(xx * 3 + 40 * k) % 256, (yy * 3) % 256, np.full_like(xx, 120)], -1).astype(np.uint8)
    cy, cx = size // 3 + 3 * (k % 4), size // 2 + 4 * (k % 3)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 5) ** 2).astype(np.uint8)
    return img, mask


def _boxes(fig, panels) -> dict:
    """Pixel boxes (y0, y1, x0, x1) of the panels in the PNG that ``save_figure`` writes (no tight bbox)."""
    fig.canvas.draw()
    height = fig.canvas.get_width_height()[1]
    out = {}
    for key, ax in panels.items():
        b = ax.get_window_extent()
        out[key] = (int(height - b.y1) + 3, int(height - b.y0) - 3, int(b.x0) + 3, int(b.x1) - 3)  # inside frame
    return out


# ----------------------------------------------------------------------------- which photos


def test_photo_of_names_the_photo_of_every_id_kind():
    assert photo_of("bottle__obj2") == "bottle"
    assert photo_of("bottle__obj2_s1") == "bottle"  # a composite synthesized from it
    assert photo_of("astronaut__view03_f0_1") == "astronaut"  # a free-form composite
    assert photo_of("HCOCO/c12345_1_3") == "c12345"
    assert photo_of("HCOCO/composite_images/c12345_1_3.jpg") == "c12345"
    assert photo_of("a0001_1_2.jpg") == "a0001"
    assert photo_of("c100_1_s0") == "c100"  # synthesized from an iHarmony4 real image
    assert photo_of("000000000009_123") == "000000000009"  # one object of a COCO photo
    assert photo_of("image_100005") == "image_100005"  # a photo-folder name is its own photo
    assert photo_of("image_100005_s1") == "image_100005"


def test_pick_distinct_gives_distinct_photos_spread_over_subsets():
    ids, subsets = [], []
    for p in range(5):  # file order groups a photo's items together, as the shards do
        for j in range(3):
            ids.append(f"coco{p}__obj{j}_s0")
            subsets.append("coco128")
    for p in range(2):
        for j in range(3):
            ids.append(f"HFlickr/f{100 + p}_1_{j + 1}")
            subsets.append("HFlickr")
    photos = [photo_of(i) for i in ids]
    assert len(set(photos)) == 7

    four = figures.pick_distinct(ids, subsets, 4, seed=0)
    assert len(four) == 4 and len({photos[i] for i in four}) == 4
    assert Counter(subsets[i] for i in four) == {"coco128": 2, "HFlickr": 2}  # both subsets, taking turns

    seven = figures.pick_distinct(ids, subsets, 7, seed=3)
    assert len({photos[i] for i in seven}) == 7  # every photo once when n == the photos available

    nine = figures.pick_distinct(ids, subsets, 9, seed=0)
    assert len(set(nine)) == 9 and len({photos[i] for i in nine}) == 7  # then photos again, never an item twice

    assert figures.pick_distinct(ids, subsets, 6, seed=5) == figures.pick_distinct(ids, subsets, 6, seed=5)
    assert figures.pick_distinct(ids, None, 100) and len(figures.pick_distinct(ids, None, 100)) == len(ids)
    assert figures.pick_distinct([], [], 3) == []
    # explicit photos win over the id rule
    assert len({i // 3 for i in figures.pick_distinct(ids, subsets, 7, photos=[str(i // 3) for i in range(21)])}) == 7


def test_spread_pick_prefers_methods_not_yet_shown_for_a_photo():
    photos = [p for p in "abc" for _ in range(4)]
    methods = ["m0", "m1", "m2", "m3"] * 3
    picks = spread_pick([photos, methods], 6, seed=1)
    assert len({photos[i] for i in picks[:3]}) == 3  # distinct photos first
    assert len({methods[i] for i in picks[:3]}) == 3  # ... with distinct methods
    assert Counter(photos[i] for i in picks) == {"a": 2, "b": 2, "c": 2}
    assert {methods[i] for i in picks} == {"m0", "m1", "m2", "m3"}
    assert all(len({methods[i] for i in picks if photos[i] == p}) == 2 for p in "abc")


# ----------------------------------------------------------------------------- the evaluation grid


def test_grid_shows_distinct_photos_as_heat_overlays_with_iou(tmp_path):
    # 4 photos, 2 composites each, stored photo by photo: spread-evenly indices would show each photo twice
    ids = [f"p{p}__obj_s{k}" for p in range(4) for k in range(2)]
    items = [_item(i) for i in range(len(ids))]
    idx = figures.pick_distinct(ids, ["unit"] * len(ids), 4, seed=0)
    images, masks = [items[i][0] for i in idx], [items[i][1] for i in idx]
    model = [cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3) * 0.2 + 0.4 for m in masks]  # a narrow range

    fig, panels = figures.draw_grid(images, masks, {"model": model}, [ids[i] for i in idx], "unit grid")
    labels = [panels[(r, "image")].get_ylabel().replace("\n", "") for r in range(len(idx))]
    assert labels == [ids[i] for i in idx]  # the full id, wrapped, never cut
    assert len({photo_of(label) for label in labels}) == 4  # 4 rows, 4 distinct photos
    assert {k[1] for k in panels} == {"image", "model", "centre prior"}  # the prior added beside the model
    for r in range(len(idx)):
        for label in ("model", "centre prior"):
            ax = panels[(r, label)]
            assert [t.get_text() for t in ax.inside] == [f"IoU {ax.iou:.1f}"]  # written inside its own panel
            assert ax.get_title() == (label if r == 0 else "")  # column names head the first row only
        assert panels[(r, "model")].iou > panels[(r, "centre prior")].iou  # the map follows its mask
    boxes = _boxes(fig, panels)
    path = figures.save_figure(fig, tmp_path / "grid.png")
    png = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.int16)
    y0, y1, x0, x1 = boxes[(0, "model")]
    heat = png[y0:y1, x0:x1]
    assert (heat[..., 0] - heat[..., 2]).max() > 80  # inferno's warm colours over the (grey) image: a heat map
    y0, y1, x0, x1 = boxes[(0, "image")]
    comp = png[y0:y1, x0:x1]
    cyan = (comp[..., 0] < 80) & (comp[..., 1] > 180) & (comp[..., 2] > 180)
    assert cyan.sum() > 20  # the ground-truth outline is drawn on the composite


def test_grid_keeps_the_callers_prior_and_writes_atomically(tmp_path):
    from dirl.metrics import centre_prior

    img, mask = _item(0)
    maps = {"m": [mask.astype(np.float32)], "centre prior": [centre_prior(S, S)]}
    fig, panels = figures.draw_grid([img], [mask], maps, ["x__y"])
    assert sorted(k[1] for k in panels) == ["centre prior", "image", "m"]  # not added twice
    import matplotlib.pyplot as plt

    plt.close(fig)
    out = figures.grid_figure([img], [mask], {"m": [mask.astype(np.float32)]}, ["x__y"], tmp_path / "g" / "grid.png")
    assert cv2.imread(str(out)) is not None
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp file left beside it


def test_quantile_pick_orders_best_to_worst_and_names_the_quantiles():
    scores = [0.30, 0.90, 0.10, 0.50, 0.70, 0.00, 0.60, 0.20, 0.40]  # 9 items: ranks 0..8 by score
    picks = figures.quantile_pick(scores, 5)
    assert [name for _, name in picks] == ["best", "upper quartile", "median", "lower quartile", "worst"]
    assert [scores[i] for i, _ in picks] == [0.90, 0.60, 0.40, 0.20, 0.00]  # np.quantile(scores, [1, .75, .5, .25, 0])
    three = figures.quantile_pick(scores, 3)
    assert [(scores[i], n) for i, n in three] == [(0.90, "best"), (0.40, "median"), (0.00, "worst")]
    assert [n for _, n in figures.quantile_pick(scores, 6)][1:3] == ["80th percentile", "60th percentile"]
    # a photo already shown gives way to the nearest rank of another photo; never an item twice
    photos = ["a", "b", "c", "d", "e", "f", "g", "h", "b"]  # items 1 (best) and 8 share photo b
    picks = figures.quantile_pick([0.9, 0.95, 0.1, 0.5, 0.3, 0.0, 0.6, 0.2, 0.85], 2, photos)
    assert [i for i, _ in picks] == [1, 5]
    assert len({i for i, _ in figures.quantile_pick([0.5] * 4, 4)}) == 4
    assert figures.quantile_pick([], 5) == [] and len(figures.quantile_pick([0.2, 0.1], 5)) == 2


def test_grid_rows_by_iou_quantile_with_labels_inside_and_the_headline(tmp_path):
    ids = [f"p{k}__obj" for k in range(9)]
    items = [_item(k) for k in range(9)]
    rng = np.random.default_rng(0)
    model = [
        np.clip(m.astype(np.float32) * (k / 8) + rng.random(m.shape).astype(np.float32) * (1 - k / 8), 0, 1)
        for k, (_, m) in enumerate(items)
    ]  # item k follows its mask more closely as k grows
    ious = [figures._iou(p, m) for p, (_, m) in zip(model, items)]
    picks = figures.quantile_pick(ious, 5, [photo_of(i) for i in ids])
    idx, names = [i for i, _ in picks], [n for _, n in picks]
    headline = figures.headline_text(
        {"n": 9, "AP": 41.5, "F1": 0.4, "IoU": 30.25}, {"n": 9, "AP": 20.0, "F1": 0.3, "IoU": 15.5}
    )
    fig, panels = figures.draw_grid(
        [items[i][0] for i in idx],
        [items[i][1] for i in idx],
        {"model": [model[i] for i in idx]},
        [ids[i] for i in idx],
        "unit: quantiles",
        row_labels=names,
        headline=headline,
    )
    rows = [panels[(r, "model")].iou for r in range(5)]
    assert rows == sorted(rows, reverse=True) and rows[0] == max(ious) and rows[-1] == min(ious)
    assert [panels[(r, "image")].inside[0].get_text() for r in range(5)] == names
    suptitle = fig._suptitle.get_text()
    assert "IoU 30.25" in suptitle and "IoU 15.50" in suptitle and "centre prior" in suptitle
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for key, ax in panels.items():  # every label lies within its own panel's frame
        frame = ax.get_window_extent(renderer)
        for text in ax.inside:
            box = text.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, key
    figures.save_figure(fig, tmp_path / "grid.png")
    assert cv2.imread(str(tmp_path / "grid.png")) is not None


def test_pr_figure_has_titled_axes_and_the_prior_in_its_own_colour(tmp_path):
    ts = np.linspace(0, 1, 11)
    model = [{"threshold": t, "precision": 0.9 - 0.3 * t, "recall": 1 - t} for t in ts]
    prior = [{"threshold": t, "precision": 0.4, "recall": 1 - t} for t in ts]
    fig, ax = figures.draw_pr(model, prior, "unit PR", model_label="unet", model_ap=55.0, prior_ap=30.0)
    assert ax.get_xlabel().startswith("recall") and ax.get_ylabel().startswith("precision")
    assert len(ax.lines) == 2 and ax.lines[0].get_color() != ax.lines[1].get_color()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["unet (AP 55.00)", "centre prior (AP 30.00)"]
    assert list(ax.lines[0].get_xdata()) == pytest.approx(sorted(1 - ts, reverse=True))  # threshold order
    out = figures.pr_figure(model, prior, tmp_path / "pr_curve.png")
    assert cv2.imread(str(out)) is not None


def test_learning_curve_marks_the_exported_epoch_and_the_prior(tmp_path):
    from dirl.train.outputs import draw_learning_curve, plot_learning_curve

    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.5 / e, "val_iou": 20.0 + 3 * e - e * e} for e in range(1, 6)
    ]
    fig, (loss_ax, iou_ax) = draw_learning_curve(history, selected_epoch=5, rule="last", prior_iou=18.5)

    def vertical(ax):
        return [ln for ln in ax.lines if len(set(ln.get_xdata())) == 1 and len(ln.get_xdata()) == 2]

    for ax in (loss_ax, iou_ax):
        marks = vertical(ax)
        assert len(marks) == 1 and marks[0].get_xdata()[0] == 5
        assert "exported epoch 5 (train.checkpoint: last)" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert ax.get_xlim()[1] > 5  # the marker is inside the frame
    flat = [ln for ln in iou_ax.lines if len(set(ln.get_ydata())) == 1 and len(ln.get_ydata()) == 2]
    assert len(flat) == 1 and flat[0].get_ydata()[0] == 18.5 and "prior" in flat[0].get_label()
    import matplotlib.pyplot as plt

    plt.close(fig)
    out = plot_learning_curve(history, tmp_path / "learning_curve.png", 5, "last", 18.5)
    assert cv2.imread(str(out)) is not None and [p.name for p in tmp_path.iterdir()] == ["learning_curve.png"]


# ----------------------------------------------------------------------------- the MDA figure


def test_mda_panels_have_contrast_on_a_narrow_range(tmp_path):
    """Attention maps within [0.49, 0.51] drawn on a fixed 0..1 grey scale came out flat grey; each panel must
    now use its own range: high contrast in the PNG, and a colour bar whose ticks span that range."""
    img, mask = _item(1, flat=True)  # a flat grey image: any contrast in a map panel comes from the map
    yy, xx = np.mgrid[0:S, 0:S]
    bump = np.exp(-((yy - S / 3) ** 2 + (xx - S / 2) ** 2) / (2 * (S / 6) ** 2)).astype(np.float32)
    attention = [0.49 + 0.02 * bump ** (1 + 0.3 * k) for k in range(5)]  # A0 .. A4, all within [0.49, 0.51]
    final = bump.copy()
    outputs = [[final] + attention[::-1]]  # the model's order: final, A4 .. A0

    fig, panels = figures.draw_mda([img], [mask], outputs, ["unit__mda"])
    boxes = _boxes(fig, panels)
    path = figures.save_figure(fig, tmp_path / "mda.png")
    png = cv2.imread(str(path))
    assert png is not None and png.shape[0] == fig.canvas.get_width_height()[1]
    for name in ("A0", "A1", "A2", "A3", "A4", "final"):
        y0, y1, x0, x1 = boxes[(0, name)]
        grey = cv2.cvtColor(png[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY).astype(np.float32)
        assert grey.size > 400, name
        lo, hi = np.percentile(grey, [1, 99])
        assert grey.std() > 25 and hi - lo > 100, f"{name}: panel std {grey.std():.1f}, 1-99 % range {hi - lo:.0f}"
        ax = panels[(0, name)]
        assert ax.range == pytest.approx((0.49, 0.51) if name != "final" else (0.0, 1.0), abs=2e-3)
    bars = sorted(a.get_ylim() for a in _colorbar_axes(panels, fig))
    own = sorted(panels[(0, name)].range for name in figures.MDA_NAMES)
    assert len(bars) == 6 and np.allclose(bars, own, atol=1e-5)  # one colour bar per map, each with its own range


def _colorbar_axes(panels, fig) -> list:
    own = set(map(id, panels.values()))
    return [a for a in fig.axes if id(a) not in own]


def test_mda_flat_map_is_named_not_hidden(tmp_path):
    img, mask = _item(2)
    flat = np.full((S, S), 0.5, np.float32)
    fig, panels = figures.draw_mda([img], [mask], [[mask.astype(np.float32)] + [flat] * 5], ["unit__flat"])
    assert "flat" in panels[(0, "A3")].get_title()
    figures.save_figure(fig, tmp_path / "flat.png")
    assert cv2.imread(str(tmp_path / "flat.png")) is not None


# ----------------------------------------------------------------------------- dirl data show


def _row(rid: str, method: str | None, real: bool, k: int, split: str = "train") -> dict:
    img, mask = _item(k, 48)
    return {
        "id": rid,
        "subset": "unit",
        "split": split,
        "image": encode_jpeg(img),
        "mask": encode_png(mask),
        "real": encode_jpeg(img) if real else None,
        "orig_h": 48,
        "orig_w": 48,
        "height": 48,
        "width": 48,
        "fg_ratio": float(mask.mean()),
        "source": "synthesized" if method else "photo",
        "synth_method": method,
        "ref_id": None,
    }


def _shards(out: Path, rows: list[dict]) -> Path:
    with ShardWriter(out, "train") as w:
        for r in rows:
            w.write(r)
    write_manifest(out, w.shards)
    return out


def test_sample_rows_picks_distinct_photos_then_methods(tmp_path):
    methods = ["reinhard", "xiao", "fecker", "idt"]
    # stored photo by photo: the first 8 rows are all the same bottle, as `dirl data show` used to draw
    rows = [
        _row(f"{photo}__obj_s{k}", m, False, k)
        for photo in ("bottle", "cup", "chair")
        for k, m in enumerate(methods * 3)
    ]
    rows[1:1] = [_row(f"mug__obj_s{k}", "xiao", False, k, split="val") for k in range(2)]  # another split
    folder = _shards(tmp_path / "synth", rows)
    three = sample_rows(folder, "train", 3)
    assert len({photo_of(r["id"]) for r in three}) == 3
    assert len({r["synth_method"] for r in three}) == 3
    six = sample_rows(folder, "train", 6, seed=1)
    assert Counter(photo_of(r["id"]) for r in six) == {"bottle": 2, "cup": 2, "chair": 2}
    assert {r["synth_method"] for r in six} == set(methods)
    assert all(set(r) >= {"image", "mask", "real", "id"} for r in six)  # whole rows, ready for contact_sheet
    assert sample_rows(folder, "test", 3) == []
    assert sorted(r["id"] for r in sample_rows(folder, "val", 5)) == ["mug__obj_s0", "mug__obj_s1"]

    # `dirl data show` in one call: 8 lines, all 3 photos, every method; an empty split is a clear error
    path = show_sheet(folder, "train", 8, tmp_path / "show" / "synth-train.png")
    assert cv2.imread(str(path)).shape[1] == LABEL_W + 3 * (TILE + GAP)
    with pytest.raises(ValueError, match="no rows in split 'test'"):
        show_sheet(folder, "test", 8, tmp_path / "show" / "synth-test.png")


def test_contact_sheet_has_no_blank_real_column_and_whole_labels(tmp_path):
    long_id = "a_photo_with_a_rather_long_file_name_from_labelme__object_number_twelve_s3"
    rows = [_row(long_id, "reinhard", False, 0), _row("cup__obj_s0", "xiao", False, 1)]
    assert sheet_columns(rows) == ["composite", "mask", "overlay"]
    sheet = cv2.imread(str(contact_sheet(rows, tmp_path / "no_real.png")))
    assert sheet.shape[1] == LABEL_W + 3 * (TILE + GAP)  # three image columns: no "real" column at all

    lines = wrap_label(long_id, LABEL_W - 8)
    assert len(lines) > 1 and "".join(lines) == long_id  # wrapped, nothing cut

    with_real = rows + [_row("bottle__obj_s1", "fecker", True, 2)]
    assert sheet_columns(with_real) == ["composite", "mask", "real", "overlay"]
    sheet = cv2.imread(str(contact_sheet(with_real, tmp_path / "real.png")))
    assert sheet.shape[1] == LABEL_W + 4 * (TILE + GAP)
    # the real cell of a row without one says so: it is not an empty (uniform) tile
    x0 = LABEL_W + 2 * (TILE + GAP)
    cell = sheet[HEADER_H : HEADER_H + TILE, x0 : x0 + TILE]
    assert cell.std() > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_real.png", "real.png"]  # atomic: no temp files
