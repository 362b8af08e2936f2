"""Contact sheets of shard rows (``dirl data show``): which items to show, and the PNG that shows them.

    rows = sample_rows("data/synth", "train", n=8, seed=0)   # distinct photos first, then distinct methods
    contact_sheet(rows, "results/show/synth-train.png")
    show_sheet("data/synth", "train", 8, "results/show/synth-train.png")   # both in one call

A sheet has one line per row: a label strip (the full id, wrapped, with subset, photo and source / method) and
then the columns composite | mask | real | overlay. The ``real`` column is laid out only when some row has a real
image; a row without one in such a sheet says so in its cell. Every tile keeps the image's aspect ratio.

:func:`photo_of` names the photo an item id comes from; :func:`spread_pick` picks rows that differ first by one
key (the photo) and then by the next (the method, or the subset). ``dirl.lifecycle.figures`` uses both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from dirl.data.images import decode_image, decode_mask
from dirl.data.shards import read_table
from dirl.io import atomic_path

TILE = 192  # side of an image cell, pixels
LABEL_W = 260  # width of the label strip on the left of each line, pixels
HEADER_H = 22  # height of the column-title strip at the top
GAP = 2  # white gap between cells
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
LINE_H = 15
BG = (255, 255, 255)
INK = (20, 20, 20)
SHOW_COLUMNS = ("id", "subset", "source", "synth_method")

# Suffixes that synthesis appends to the id of the photo (or iHarmony4 real image) a composite is made from:
# ``<id>_s<k>`` (the object's own mask) and ``<id>_f<k>_<j>`` (a free-form region); see dirl.data.build.
_SYNTH_SUFFIX = re.compile(r"_(s\d+|f\d+_\d+)$")
# iHarmony4 composites ``c12345_1_3`` (photo c12345, object 1, variant 3), their real/mask names ``c12345_1``,
# and per-object ids of a COCO photo ``000000000009_123``: the photo is the part before the first ``_``.
_NUMBERED = re.compile(r"^([A-Za-z]?\d+)_\d+(?:_\d+)?$")


def photo_of(item_id: str) -> str:
    """The photo an item id comes from (a best effort from the id alone).

    ``bottle__obj2_s1`` -> ``bottle`` (sample / photo-folder items ``<photo>__<item>``, synthesis suffixes
    ``_s<k>`` / ``_f<k>_<j>`` dropped); ``HCOCO/c12345_1_3`` and ``a0001_1_2.jpg`` -> ``c12345``, ``a0001``
    (iHarmony4: the name before the first ``_``); any other name (``image_100005``) is its own photo.
    """
    name = PurePosixPath(str(item_id).replace("\\", "/")).name
    stem, ext = os.path.splitext(name)
    if ext.lower() in (".jpg", ".jpeg", ".png"):
        name = stem
    name = _SYNTH_SUFFIX.sub("", name)
    if "__" in name:
        return name.split("__", 1)[0]
    m = _NUMBERED.match(name)
    return m.group(1) if m else name


def spread_pick(keys: Sequence[Sequence[str]], n: int, seed: int = 0) -> list[int]:
    """Pick ``n`` indices (in pick order) so that the picks differ first by ``keys[0]``, then by ``keys[1]``...

    ``keys`` are parallel sequences (one value per item), most important first, e.g. ``[photos, methods]``.
    Each pick takes the item whose first key has been picked least often, then whose (first, last) pair has,
    then whose other keys have, ties broken at random (``seed``): so ``n`` distinct photos when there are that
    many, spread over the methods; then photos again, with methods not yet shown for them. Deterministic.
    """
    if not keys:
        raise ValueError("spread_pick needs at least one key sequence")
    size = len(keys[0])
    if any(len(k) != size for k in keys):
        raise ValueError(f"spread_pick: key sequences differ in length ({[len(k) for k in keys]})")
    n = max(0, min(int(n), size))
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    codes, counts = [], []
    for k in keys:
        _, code = np.unique(np.asarray([str(v) for v in k], dtype=object), return_inverse=True)
        codes.append(code.reshape(-1))
        counts.append(np.zeros(int(code.max()) + 1, np.int64))
    pair = codes[0] * (int(codes[-1].max()) + 1) + codes[-1]  # (first key, last key) pairs already shown
    pair_seen = np.zeros(int(pair.max()) + 1, np.int64)
    tiebreak = rng.permutation(size)
    free = np.ones(size, bool)
    picks: list[int] = []
    for _ in range(n):
        cand = np.flatnonzero(free)
        levels = [counts[0][codes[0][cand]], pair_seen[pair[cand]]]  # most important first
        levels += [c[code[cand]] for c, code in zip(counts[1:], codes[1:])] + [tiebreak[cand]]
        order = np.lexsort(levels[::-1])  # lexsort: the last key is the primary one
        i = int(cand[order[0]])
        picks.append(i)
        free[i] = False
        pair_seen[pair[i]] += 1
        for c, code in zip(counts, codes):
            c[code[i]] += 1
    return picks


def sample_rows(folder: str | os.PathLike, split: str | None, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of a shard folder's ``split`` for a contact sheet: distinct photos first, then distinct methods.

    Only the id / split / source / method columns are read to choose; the chosen rows are then taken whole from
    the memory-mapped table (no image of another row is copied). Rows come back in pick order: one per photo
    before any photo repeats.
    """
    meta = read_table(folder, None, [*SHOW_COLUMNS, "split"])
    where = (
        np.arange(meta.num_rows)
        if split is None
        else np.flatnonzero(np.asarray(meta["split"].to_pylist(), dtype=object) == split)
    )
    if where.size == 0:
        return []
    meta = meta.take(where)
    ids = meta["id"].to_pylist()
    methods = [m or s for m, s in zip(meta["synth_method"].to_pylist(), meta["source"].to_pylist())]
    picks = spread_pick([[photo_of(i) for i in ids], methods], n, seed)
    return read_table(folder).take(where[picks]).to_pylist()


def show_sheet(folder: str | os.PathLike, split: str, n: int, path: str | os.PathLike, seed: int = 0) -> Path:
    """``dirl data show``: a contact sheet of ``n`` rows of ``split`` picked by :func:`sample_rows`."""
    rows = sample_rows(folder, split, n, seed)
    if not rows:
        raise ValueError(f"{folder} has no rows in split {split!r}; run `dvc repro` (or `dirl data preprocess`) first")
    return contact_sheet(rows, path)


# ----------------------------------------------------------------------------- drawing


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """Tint the mask's region of an RGB uint8 image and outline it: (H, W, 3) -> (H, W, 3)."""
    out = image.copy()
    fg = mask.astype(bool)
    out[fg] = (out[fg] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, max(1, round(max(image.shape[:2]) / 150)))
    return out


def _fit(img: np.ndarray, side: int = TILE) -> np.ndarray:
    """An RGB uint8 image scaled to fit a ``side`` x ``side`` cell (aspect kept), centred on white."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    small = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
    cell = np.full((side, side, 3), BG, np.uint8)
    y, x = (side - nh) // 2, (side - nw) // 2
    cell[y : y + nh, x : x + nw] = small
    return cell


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def wrap_label(text: str, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` pixels (cv2's font), breaking after ``/ _ - . space`` where
    possible and inside a word only when one word is wider than the line. Nothing is dropped."""
    lines, line = [], ""
    tokens = [t for t in re.split(r"(?<=[/_\-. ])", text) if t]
    for tok in tokens:
        if _text_width(line + tok) <= width:
            line += tok
            continue
        if line:
            lines.append(line.rstrip())
            line = ""
        while _text_width(tok) > width:  # a word longer than a line: cut it by characters
            k = max(1, max(j for j in range(1, len(tok) + 1) if _text_width(tok[:j]) <= width or j == 1))
            lines.append(tok[:k])
            tok = tok[k:]
        line = tok
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


def _label_strip(texts: Sequence[str], height: int, width: int = LABEL_W) -> np.ndarray:
    strip = np.full((height, width, 3), BG, np.uint8)
    y = LINE_H
    for text in texts:
        for line in wrap_label(text, width - 8):
            cv2.putText(strip, line, (4, y), FONT, FONT_SCALE, INK, 1, cv2.LINE_AA)
            y += LINE_H
        y += 3
    return strip


def _note_cell(text: str, side: int = TILE) -> np.ndarray:
    cell = np.full((side, side, 3), 235, np.uint8)
    for k, line in enumerate(wrap_label(text, side - 12)):
        cv2.putText(cell, line, (6, side // 2 + k * LINE_H), FONT, FONT_SCALE, (90, 90, 90), 1, cv2.LINE_AA)
    return cell


def _row_labels(row: dict) -> list[str]:
    out = [str(row.get("id", "?"))]
    if row.get("subset"):
        out.append(f"subset: {row['subset']}")
    out.append(f"photo: {photo_of(row.get('id', '?'))}")
    kind = row.get("source") or "?"
    out.append(f"{kind}: {row['synth_method']}" if row.get("synth_method") else kind)
    if row.get("fg_ratio") is not None:
        out.append(f"region: {float(row['fg_ratio']):.1%} of the image")
    return out


def sheet_columns(rows: Sequence[dict]) -> list[str]:
    """The image columns a sheet of ``rows`` lays out: composite, mask, real (only if a row has one), overlay."""
    has_real = any(r.get("real") for r in rows)
    return ["composite", "mask"] + (["real"] if has_real else []) + ["overlay"]


def contact_sheet(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write a PNG with one line per shard row (label | composite | mask | [real] | overlay); return its path."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    columns = sheet_columns(rows)
    width = LABEL_W + len(columns) * (TILE + GAP)
    header = np.full((HEADER_H, width, 3), BG, np.uint8)
    for c, name in enumerate(columns):
        x = LABEL_W + c * (TILE + GAP) + (TILE - _text_width(name)) // 2
        cv2.putText(header, name, (x, HEADER_H - 7), FONT, 0.5, INK, 1, cv2.LINE_AA)
    lines = [header]
    for row in rows:
        image = decode_image(row["image"])
        mask = decode_mask(row["mask"])[0]
        cells = {"composite": _fit(image), "mask": _fit(mask * 255), "overlay": _fit(overlay(image, mask))}
        if "real" in columns:
            cells["real"] = _fit(decode_image(row["real"])) if row.get("real") else _note_cell("no real image")
        labels = _row_labels(row)
        needed = sum(len(wrap_label(t, LABEL_W - 8)) * LINE_H + 3 for t in labels) + LINE_H
        height = max(TILE, needed)
        parts = [_label_strip(labels, height)]
        for name in columns:
            cell = np.full((height, TILE + GAP, 3), BG, np.uint8)
            cell[:TILE, :TILE] = cells[name]
            parts.append(cell)
        lines.append(np.concatenate(parts, axis=1))
        lines.append(np.full((GAP, width, 3), BG, np.uint8))
    sheet = np.concatenate(lines, axis=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path} (cv2.imwrite failed)")
    return path
