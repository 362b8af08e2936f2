"""Preprocessing: decode, check and resize every item once, in parallel, into a shard folder (``shards.py``).

Each item (a dict or dataclass, see :class:`Item`) names a composite, its mask and optionally the real image.
Images are stored resized to ``size`` x ``size`` (aspect not kept), as JPEG; masks as 1-bit PNG; the original
size is kept in ``orig_h``/``orig_w``. Squares are the simplest input for the train crop, but its aspect range
then applies to the squashed image rather than the original. With ``keep_aspect`` (``data.keep_aspect``, the
iHarmony4 profiles) the shortest side is stored at ``size`` and the aspect kept, so the reference's random resized
crop sees the photo's own proportions; ``height``/``width`` hold the stored size either way.

Test composites of a real dataset (``split == "test"``, ``source == "composite"``, e.g. the iHarmony4 le50 test
list) are the exception when ``keep_test_originals`` (default): they are stored at their original resolution, so
that evaluation resizes each of them once, from the original straight to the model input size, as the reference
does (a stored 256 JPEG would add a second resize and a lossy re-encode). A JPEG composite (or real image) is
stored as the file's bytes, unchanged (decoded once to validate it); any other format as a lossless RGB PNG of
the decoded image; the mask as a 1-bit PNG at the original size; ``height``/``width`` = ``orig_h``/``orig_w``.
Nothing is resized, so such a row is never dropped because its foreground vanishes at ``size``: a foreground too
small for the input size is scored as the reference scores it (see ``dirl.metrics``).

A bad item (unreadable or missing file, mask of another size, empty or all-foreground mask, foreground of a
resized item that vanishes or fills the image at ``size``) is recorded in the :class:`~dirl.data.issues.IssueLog`
with its id and the reason (the reason names the file) and skipped; a non-binary mask is binarised at 127 and
noted. The run fails only if the bad fraction exceeds ``max_bad_fraction``.

The output folder is rebuilt in a hidden sibling (``.<name>.tmp-<pid>``) and swapped in only once complete
(manifest written): a failed or killed run leaves the previous output, or nothing, where readers look.

Items are processed in chunks by the data engine (:mod:`dirl.data.engine`): ``spawn``-started local processes
(safe beside threads, Ray or torch; as with any spawn pool, a script that calls :func:`write_shards` with
``workers != 1`` needs the ``if __name__ == "__main__":`` guard), or Ray tasks across a cluster's nodes. Results
come back in input order and this process writes the shards, so output order and bytes depend neither on
``workers`` nor on the engine.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Generator, Iterable, Iterator, Mapping, Sized
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dirl.data.engine import ordered_map
from dirl.data.images import (
    BadImage,
    decode_image,
    decode_mask,
    encode_jpeg,
    encode_png,
    read_source,
    resize_image,
    resize_pair,
    shortest_side_hw,
)
from dirl.data.issues import IssueLog
from dirl.data.shards import SOURCES, SPLITS, ShardWriter, write_manifest
from dirl.io import staging_dir, swap_in, write_json_atomic
from dirl.progress import bar as progress_bar

CHUNK = 16  # items per task sent to a worker process
ISSUES_FILE = "issues.json"


@dataclasses.dataclass
class Item:
    """One composite to store. ``composite``/``mask``/``real`` are file paths or encoded bytes."""

    id: str
    subset: str
    split: str  # train | val | test
    composite: str | Path | bytes
    mask: str | Path | bytes | None
    real: str | Path | bytes | None = None
    source: str = "composite"  # composite | synthesized
    synth_method: str | None = None
    ref_id: str | None = None


def _as_dict(item: Any) -> dict[str, Any]:
    """Validate an item (dict or dataclass) and return it as a plain dict with every :class:`Item` field."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        d = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    elif isinstance(item, Mapping):
        d = dict(item)
    else:
        raise TypeError(f"preprocess items must be dicts or dataclasses, got {type(item).__name__}")
    for key in ("id", "subset", "split", "composite"):
        if d.get(key) in (None, ""):
            fields = [f.name for f in dataclasses.fields(Item)]
            raise ValueError(f"preprocess item {d.get('id')!r} lacks {key!r} (item fields: {fields})")
    d.setdefault("mask", None)
    d.setdefault("real", None)
    d.setdefault("source", "composite")
    d.setdefault("synth_method", None)
    d.setdefault("ref_id", None)
    if d["split"] not in SPLITS or d["source"] not in SOURCES:
        raise ValueError(
            f"preprocess item {d['id']!r}: split {d['split']!r} must be one of {SPLITS}, "
            f"source {d['source']!r} one of {SOURCES}"
        )
    return d


def _label(src: Any, what: str) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"<{what} bytes>"


def keeps_original(item: Mapping[str, Any], keep_test_originals: bool = True) -> bool:
    """True when ``item`` is stored at its original resolution: a real dataset's test composite."""
    return keep_test_originals and item["split"] == "test" and item["source"] == "composite"


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def encode_png_rgb(img: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB image as a lossless 8-bit RGB PNG."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"encode_png_rgb expects (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("OpenCV failed to encode the image as PNG")
    return buf.tobytes()


def _read_original(src: Any, what: str) -> tuple[np.ndarray, bytes]:
    """Decode ``src`` (path or bytes) once; return ``(RGB image, bytes to store)``.

    The bytes to store are the file's own when it is a JPEG (decoding them gives this very image), else a
    lossless PNG of the decoded image. Raises :class:`BadImage`.
    """
    buf, label = read_source(src, _label(src, what))
    data = buf.tobytes()
    img = decode_image(data, label)  # (H, W, 3)
    return img, (data if _is_jpeg(data) else encode_png_rgb(img))


def process_item(
    item: dict[str, Any],
    size: int,
    jpeg_quality: int = 95,
    store_real: bool = True,
    keep_test_originals: bool = True,
    keep_aspect: bool = False,
) -> tuple[dict | None, list[str], list[str]]:
    """Decode, check, resize and encode one item. Returns ``(row or None, problems, notes)``.

    ``row`` is a shard row (``shards.SCHEMA``); it is None when a problem makes the item unusable. A test
    composite is stored at its original resolution when ``keep_test_originals`` (module docstring). Other rows
    are resized to ``size`` x ``size``, or with ``keep_aspect`` to a shortest side of ``size`` (never enlarged).
    """
    notes: list[str] = []
    original = keeps_original(item, keep_test_originals)
    try:
        if original:
            img, img_bytes = _read_original(item["composite"], "composite")  # (H, W, 3), stored bytes
        else:
            img = decode_image(item["composite"], _label(item["composite"], "composite"))  # (H, W, 3)
        if item["mask"] is None:
            return None, ["no mask given for this composite"], notes
        mask_name = _label(item["mask"], "mask")
        mask, binary = decode_mask(item["mask"], mask_name)  # (H, W) {0, 1}
    except BadImage as e:
        return None, [str(e)], notes
    (ih, iw), (mh, mw) = img.shape[:2], mask.shape
    if (mh, mw) != (ih, iw):
        return None, [f"{mask_name}: mask is {mh}x{mw} (HxW) but the composite is {ih}x{iw}"], notes
    if not binary:
        notes.append(f"{mask_name}: non-binary mask, binarised at 127")
    fg = float(mask.mean())
    if fg == 0.0:
        return None, [f"{mask_name}: empty mask (no foreground pixel)"], notes
    if fg == 1.0:
        return None, [f"{mask_name}: mask covers the whole image (no background pixel)"], notes
    if original:  # stored as is: nothing resized, nothing can vanish
        (sh, sw), mask_s = (ih, iw), mask
    else:
        target = shortest_side_hw(ih, iw, size) if keep_aspect else (size, size)
        img_s, mask_s = resize_pair(img, mask, target)  # (th, tw, 3), (th, tw)
        if not mask_s.any() or mask_s.all():
            what = "vanishes" if not mask_s.any() else "fills the image"
            return None, [f"{mask_name}: foreground ({fg:.4%}) {what} once resized to {target[0]}x{target[1]}"], notes
        (sh, sw), img_bytes = target, encode_jpeg(img_s, jpeg_quality)
    real = None
    if store_real and item["real"] is not None:
        real_name = _label(item["real"], "real")
        try:
            if original:
                r, r_bytes = _read_original(item["real"], "real")
            else:
                r = decode_image(item["real"], real_name)
            if r.shape != img.shape:
                notes.append(
                    f"{real_name}: real image is {r.shape[0]}x{r.shape[1]}, composite {ih}x{iw}; stored without it"
                )
            else:
                real = r_bytes if original else encode_jpeg(resize_image(r, (sh, sw)), jpeg_quality)
        except BadImage as e:
            notes.append(f"{e}; stored without the real image")
    row = {
        "id": str(item["id"]),
        "subset": str(item["subset"]),
        "split": item["split"],
        "image": img_bytes,
        "mask": encode_png(mask_s),
        "real": real,
        "orig_h": ih,
        "orig_w": iw,
        "height": sh,
        "width": sw,
        "fg_ratio": fg,
        "source": item["source"],
        "synth_method": item["synth_method"],
        "ref_id": item["ref_id"],
    }
    return row, [], notes


def _process_chunk(
    chunk: list[dict],
    size: int,
    jpeg_quality: int,
    store_real: bool,
    keep_test_originals: bool,
    keep_aspect: bool = False,
) -> list[tuple]:
    return [process_item(it, size, jpeg_quality, store_real, keep_test_originals, keep_aspect) for it in chunk]


def _chunks(items: Iterable[dict], n: int) -> Iterator[list[dict]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _results(
    items: Iterable[dict], workers: int, args: tuple, engine: Any = None
) -> Generator[tuple[dict, tuple], None, None]:
    """Yield ``(item, process_item result)`` in input order, chunks of ``CHUNK`` run by the data engine
    (:func:`dirl.data.engine.ordered_map`: in this process when ``workers == 1``, else local processes with at most
    ``4 * workers`` chunks in flight, or Ray tasks)."""
    with closing(
        ordered_map(_process_chunk, _chunks(items, CHUNK), engine, args=args, workers=workers, desc="preprocess")
    ) as results:
        for chunk, rows in results:
            yield from zip(chunk, rows)


def write_shards(
    items: Iterable[Any],
    out_dir: str | Path,
    size: int,
    workers: int = 0,
    issues: IssueLog | None = None,
    max_bad_fraction: float = 0.05,
    jpeg_quality: int = 95,
    store_real: bool = True,
    max_shard_bytes: int = 256 << 20,
    batch_rows: int = 256,
    progress: bool = True,
    keep_test_originals: bool = True,
    dropped: int = 0,
    engine: Any = None,
    keep_aspect: bool = False,
) -> dict:
    """Build the shard folder ``out_dir`` from ``items``; returns the manifest.

    ``workers``: processes (0 = all cores, 1 = in this process). ``engine``: where the items are processed, a
    Config (``cluster.data_engine``), ``"local"`` or ``"ray"`` (:mod:`dirl.data.engine`); default local. On Ray the
    items' files and ``out_dir`` must be on storage every node reaches (this process writes the shards). Shards are named by split (``train-00000.arrow``).
    ``keep_test_originals``: store test composites (``source == "composite"``) at their original resolution and
    bytes instead of ``size`` x ``size`` (module docstring); train/val rows and other sources are always resized.
    ``keep_aspect``: resized rows keep their aspect with the shortest side at ``size`` (``data.keep_aspect``).
    ``issues`` collects bad items (default: a new log); it is also written to ``<out_dir>/issues.json``.
    ``dropped``: items the caller saw and left out before this call (already in ``issues`` as bad items or as
    exclusions); they count in the total that the bad fraction is taken over, so every item seen counts.
    Raises ``TooManyBadItems`` (from ``issues.check``) above ``max_bad_fraction``; ``out_dir`` is then untouched.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise FileExistsError(
            f"{out_dir} exists and is not a shard folder (no manifest.json); preprocess "
            f"replaces its output folder as a whole: remove it or choose another out_dir"
        )
    issues = issues if issues is not None else IssueLog("preprocess")
    workers = workers if workers > 0 else len(os.sched_getaffinity(0))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out_dir)
    writers: dict[str, ShardWriter] = {}
    total = 0
    seen: set[str] = set()
    try:
        dicts = (_as_dict(it) for it in items)
        bar = progress_bar(
            total=len(items) if isinstance(items, Sized) else None, unit="img", desc="preprocess", disable=not progress
        )
        args = (size, jpeg_quality, store_real, keep_test_originals, keep_aspect)
        with bar, closing(_results(dicts, workers, args, engine)) as results:
            for item, (row, problems, notes) in results:
                total += 1
                bar.update(1)
                for n in notes:
                    issues.note(item["id"], n)
                if item["id"] in seen:
                    problems = [f"duplicate id (an earlier item has it; {_label(item['composite'], 'composite')})"]
                for p in problems:
                    issues.add(item["id"], p)
                if problems or row is None:
                    continue
                seen.add(item["id"])
                split = row["split"]
                if split not in writers:
                    writers[split] = ShardWriter(tmp, split, max_shard_bytes, batch_rows)
                writers[split].write(row)
        shards = [info for w in writers.values() for info in w.close()]
        n_seen = total + dropped
        if total == 0:
            if dropped:
                issues.check(n_seen, max_bad_fraction)  # all of them bad: the full report, then TooManyBadItems
                raise ValueError(
                    f"preprocess into {out_dir}: nothing left to store; all {dropped} item(s) were "
                    f"left out before preprocessing (reasons in the stage's issues.json)"
                )
            raise ValueError(f"preprocess into {out_dir}: no items given")
        issues.check(n_seen, max_bad_fraction)
        write_json_atomic(tmp / ISSUES_FILE, issues.to_dict(n_seen))
        extra = {
            "items": n_seen,
            "bad": len(issues),
            "notes": len(issues.notes),
            "stored_size": size,
            "jpeg_quality": jpeg_quality,
            "store_real": store_real,
            "keep_test_originals": keep_test_originals,
            "keep_aspect": keep_aspect,
        }
        manifest = write_manifest(tmp, shards, extra)
        swap_in(tmp, out_dir)
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
