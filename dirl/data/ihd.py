"""iHarmony4 on disk: find the dataset root, scan composites with their masks, split, verify the layout.

Layout (per subset HCOCO, HAdobe5k, HFlickr, Hday2night; any subset folder present is used)::

    <root>/<Subset>/composite_images/<image>_<fg>_<k>.jpg   composite k of foreground fg of photo <image>
    <root>/<Subset>/masks/<image>_<fg>.png                  its inharmonious region (255 = foreground)
    <root>/<Subset>/real_images/<image>.jpg                 the untouched photo (optional here)
    <root>/<Subset>_train.txt, <Subset>_test.txt            official lists

List lines look like ``HFlickr/composite_images/f1510_1_2.jpg`` (DIRL's ``le50_*.txt``); bare file names
(``f1510_1_2.jpg``) and ``composite_images/...`` lines are accepted too, the subset then coming from the list's
file name (``HFlickr_train.txt``) or the id's first letter (c, a, f, d).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dirl.data.images import decode_mask
from dirl.data.issues import IssueLog

SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
PREFIX_SUBSET = {"c": "HCOCO", "a": "HAdobe5k", "f": "HFlickr", "d": "Hday2night"}  # id's first letter
COMPOSITES, MASKS, REALS = "composite_images", "masks", "real_images"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_NAME_RE = re.compile(r"^(?P<image>.+)_(?P<fg>[^_]+)_(?P<k>[^_]+)$")  # <image>_<fg>_<k>
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # JPEG frame markers
ListSpec = Path | str | Sequence[Path | str] | None


@dataclass(frozen=True)
class IHDItem:
    """One composite with its mask (and real photo when present)."""

    id: str  # composite file stem, e.g. "f1510_1_2"
    subset: str  # "HFlickr"
    composite: Path
    mask: Path
    real: Path | None = None
    split: str | None = None  # "train" | "val" | "test" once assigned

    @property
    def key(self) -> str:
        """The item as list files name it: ``HFlickr/composite_images/f1510_1_2.jpg``."""
        return f"{self.subset}/{COMPOSITES}/{self.composite.name}"

    @property
    def image_id(self) -> str:
        """The source photo: ``f1510`` for ``f1510_1_2`` (composites of one photo share it)."""
        return self.id.rsplit("_", 2)[0]


@dataclass
class SubsetStats:
    """Counts gathered while scanning one subset folder."""

    composites: int = 0  # composite files found
    items: int = 0  # usable composites (mask present, both readable)
    masks: int = 0
    real_images: int = 0
    missing_mask: int = 0
    missing_real: int = 0
    unreadable: int = 0
    bad_name: int = 0
    orphan_masks: int = 0  # masks no composite refers to
    extra_files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- headers


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from a JPEG or PNG header; None if the file is empty or its header is not valid."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return (w, h) if w and h else None
            if not head.startswith(b"\xff\xd8"):
                return None
            f.seek(2)
            while True:  # walk the JPEG segments up to the frame header
                if f.read(1) != b"\xff":
                    return None
                byte = f.read(1)
                while byte == b"\xff":  # fill bytes
                    byte = f.read(1)
                if not byte:
                    return None
                marker = byte[0]
                if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers
                    continue
                if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                    return None
                seg = f.read(2)
                if len(seg) != 2:
                    return None
                length = struct.unpack(">H", seg)[0]
                if length < 2:
                    return None
                if marker in _SOF:
                    data = f.read(5)
                    if len(data) != 5:
                        return None
                    h, w = struct.unpack(">HH", data[1:5])
                    return (w, h) if w and h else None
                f.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None


def foreground_ratio(mask_path: Path) -> float:
    """Fraction of mask pixels above half scale (the inharmonious region's share of the image).

    Raises ``BadImage`` (a ``ValueError`` naming the file and why) for a mask that cannot be decoded; the
    decoder's own messages go into that reason, not to stderr.
    """
    mask, _ = decode_mask(mask_path)  # (H, W) {0, 1}
    return float(np.count_nonzero(mask)) / mask.size


# ---------------------------------------------------------------------------------------------- layout


def _is_subset_dir(path: Path) -> bool:
    return path.is_dir() and (path / COMPOSITES).is_dir()


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def find_subsets(root: Path | str, subsets: Iterable[str] | None = None) -> list[Path]:
    """Subset folders of ``root`` (those holding ``composite_images/``), optionally only the named ones."""
    found = [p for p in _visible_dirs(Path(root)) if _is_subset_dir(p)]
    if subsets is not None:
        wanted = set(subsets)
        found = [p for p in found if p.name in wanted]
    return found


def find_root(extracted_dir: Path | str, max_depth: int = 2) -> Path:
    """The iHarmony4 root (folder whose children are subset folders) inside an extracted archive.

    The root may be ``extracted_dir`` itself or nested up to ``max_depth`` levels (``iHarmony4/``). If
    ``extracted_dir`` is itself a subset folder named like one (``HCOCO/composite_images``), its parent is
    the root.
    """
    base = Path(extracted_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"iHarmony4 folder {base} does not exist")
    if _is_subset_dir(base):
        if base.name in SUBSETS:
            return base.parent
        raise ValueError(
            f"{base} holds composite_images/ directly; move it under <root>/<Subset>/ "
            f"(Subset one of {', '.join(SUBSETS)}) so the subset is known"
        )
    level = [base]
    for _ in range(max_depth + 1):
        roots = [d for d in level if find_subsets(d)]
        if len(roots) == 1:
            return roots[0]
        if len(roots) > 1:
            raise ValueError(
                f"several iHarmony4 roots under {base}: {', '.join(map(str, roots))}; "
                f"extract each archive to its own folder or point at one of them"
            )
        level = [c for d in level for c in _visible_dirs(d)]
    raise FileNotFoundError(
        f"no iHarmony4 layout under {base} (looked {max_depth} levels deep for <Subset>/composite_images/). "
        f"Expected <root>/<Subset>/composite_images/*.jpg with <root>/<Subset>/masks/*.png"
    )


def _names(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name for e in it if not e.name.startswith(".") and e.is_file()}


def _scan_subset(sub: Path, issues: IssueLog, check_headers: bool) -> tuple[list[IHDItem], SubsetStats]:
    """Items of one subset folder, with problems recorded in ``issues``."""
    name = sub.name
    stats = SubsetStats()
    composites = sorted(_names(sub / COMPOSITES))
    masks = _names(sub / MASKS)
    reals = _names(sub / REALS)
    has_real_dir = (sub / REALS).is_dir()
    stats.masks, stats.real_images = len(masks), len(reals)
    if not has_real_dir:
        issues.note(f"{name}/{REALS}", "folder absent: items have no real image")
    mask_ok: dict[str, bool] = {}
    used_masks: set[str] = set()
    items = []
    for fname in composites:
        key = f"{name}/{COMPOSITES}/{fname}"
        stem, ext = os.path.splitext(fname)
        if ext.lower() not in IMAGE_EXTS:
            stats.extra_files.append(key)
            continue
        stats.composites += 1
        m = _NAME_RE.match(stem)
        if m is None:
            stats.bad_name += 1
            issues.add(key, "name is not <image>_<fg>_<k>: cannot derive its mask")
            continue
        mask_name = f"{m['image']}_{m['fg']}.png"
        used_masks.add(mask_name)
        if mask_name not in masks:
            stats.missing_mask += 1
            issues.add(key, f"missing mask {name}/{MASKS}/{mask_name}")
            continue
        comp_path, mask_path = sub / COMPOSITES / fname, sub / MASKS / mask_name
        if check_headers:
            bad = []
            if image_size(comp_path) is None:
                bad.append(f"composite {key}")
            if mask_name not in mask_ok:
                mask_ok[mask_name] = image_size(mask_path) is not None
            if not mask_ok[mask_name]:
                bad.append(f"mask {name}/{MASKS}/{mask_name}")
            if bad:
                stats.unreadable += 1
                issues.add(key, "unreadable (empty or not a JPEG/PNG header): " + ", ".join(bad))
                continue
        real = None
        real_name = next(
            (r for r in (f"{m['image']}.jpg", f"{m['image']}.png", f"{m['image']}.jpeg") if r in reals), None
        )
        if real_name is not None:
            real = sub / REALS / real_name
            if check_headers and image_size(real) is None:
                issues.note(key, f"real image {name}/{REALS}/{real_name} unreadable; used without it")
                real = None
        elif has_real_dir:
            stats.missing_real += 1
            issues.note(key, f"no real image {name}/{REALS}/{m['image']}.jpg")
        items.append(IHDItem(id=stem, subset=name, composite=comp_path, mask=mask_path, real=real))
    stats.items = len(items)
    stats.orphan_masks = len({n for n in masks if n.lower().endswith(".png")} - used_masks)
    return items, stats


def scan(
    root: Path | str, issues: IssueLog, subsets: Iterable[str] | None = None, check_headers: bool = True
) -> list[IHDItem]:
    """Every composite under ``root`` that has a readable mask; other composites go to ``issues``.

    A missing real image is only noted (real images are optional). ``check_headers`` reads each file's
    JPEG/PNG header (cheap) to catch empty or truncated-at-start files.
    """
    root = Path(root)
    subs = find_subsets(root, subsets)
    if not subs:
        raise FileNotFoundError(
            f"no subset folders (<Subset>/composite_images/) under {root}; "
            f"use find_root() on an extracted archive first"
        )
    items: list[IHDItem] = []
    for sub in subs:
        items += _scan_subset(sub, issues, check_headers)[0]
    return items


def verify_layout(
    root: Path | str, issues: IssueLog | None = None, subsets: Iterable[str] | None = None, check_headers: bool = True
) -> dict:
    """Report on an iHarmony4 tree: per-subset counts, missing masks/reals, unreadable files, lists found."""
    root = Path(root)
    log = issues if issues is not None else IssueLog("verify")
    per_subset: dict[str, dict] = {}
    for sub in find_subsets(root, subsets):
        _, stats = _scan_subset(sub, log, check_headers)
        per_subset[sub.name] = {k: v for k, v in vars(stats).items() if k != "extra_files"}
        per_subset[sub.name]["extra_files"] = len(stats.extra_files)
    totals = {
        k: sum(s[k] for s in per_subset.values())
        for k in (
            "composites",
            "items",
            "masks",
            "real_images",
            "missing_mask",
            "missing_real",
            "unreadable",
            "bad_name",
            "orphan_masks",
        )
    }
    lists = sorted(p.name for p in root.glob("*.txt") if re.search(r"_(train|test)\.txt$", p.name))
    return {
        "root": str(root),
        "subsets": per_subset,
        "missing_subsets": [s for s in SUBSETS if s not in per_subset],
        "lists": lists,
        "totals": totals,
        "bad": len(log),
        "ok": totals["items"] > 0 and len(log) == 0,
        "first_issues": log.issues[:10],
    }


# ---------------------------------------------------------------------------------------------- lists, splits


def _list_subset(path: Path, subset: str | None) -> str | None:
    if subset:
        return subset
    m = re.match(r"^(" + "|".join(SUBSETS) + r")_", path.name, re.IGNORECASE)
    if m:
        return next(s for s in SUBSETS if s.lower() == m.group(1).lower())
    return None


def read_list(path: Path | str, subset: str | None = None, issues: IssueLog | None = None) -> list[str]:
    """Lines of a split list as ``<Subset>/composite_images/<file>``, in order, without duplicates.

    Blank lines and ``#`` comments are skipped. A line without a subset takes ``subset``, else the one in the
    list's file name (``HCOCO_train.txt``), else the one its id's first letter names. A line whose subset cannot
    be told is noted in ``issues`` (``<list>:<line>``) and skipped; without ``issues`` it raises ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist (data.iharmony4.train_list / test_list)")
    default = _list_subset(path, subset)
    out: dict[str, None] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.replace("\\", "/").split("/") if p]
        fname = parts[-1]
        if len(parts) >= 3 and parts[-2] == COMPOSITES:
            sub = parts[-3]
        elif len(parts) == 2 and parts[0] != COMPOSITES:
            sub = parts[0]
        else:
            sub = default or PREFIX_SUBSET.get(fname[:1]) or ""
        if not sub or not fname.lower().endswith(IMAGE_EXTS):
            problem = (
                f"cannot tell the subset and composite file of {line[:80]!r}; write lines as "
                f"<Subset>/composite_images/<file>.jpg or name the list <Subset>_train.txt"
            )
            if issues is None:
                raise ValueError(f"{path}:{lineno}: {problem}")
            issues.note(f"{path.name}:{lineno}", f"{problem}: line skipped")
            continue
        out[f"{sub}/{COMPOSITES}/{fname}"] = None
    return list(out)


def official_lists(root: Path | str) -> tuple[list[Path], list[Path]]:
    """The official ``<Subset>_train.txt`` and ``<Subset>_test.txt`` lists found in ``root``."""
    root = Path(root)
    train = [root / f"{s}_train.txt" for s in SUBSETS if (root / f"{s}_train.txt").is_file()]
    test = [root / f"{s}_test.txt" for s in SUBSETS if (root / f"{s}_test.txt").is_file()]
    return train, test


def _read_lists(spec: ListSpec, issues: IssueLog | None = None) -> dict[str, str]:
    """key -> list file it came from, for one list path or several (malformed lines noted in ``issues``)."""
    if spec is None:
        return {}
    paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
    keys: dict[str, str] = {}
    for p in paths:
        for key in read_list(p, issues=issues):
            keys.setdefault(key, Path(p).name)
    return keys


def unit_hash(text: str, seed: int, salt: str) -> float:
    """Deterministic value in [0, 1) for ``text``: the same text always falls on the same side of a cut."""
    digest = hashlib.sha256(f"{seed}:{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    items: Sequence[IHDItem],
    train_list: ListSpec = None,
    test_list: ListSpec = None,
    le50: bool = False,
    val_fraction: float = 0.1,
    seed: int = 42,
    issues: IssueLog | None = None,
    *,
    test_fraction: float = 0.1,
    max_fg_ratio: float = 0.5,
    missing_ok: bool = False,
) -> list[IHDItem]:
    """Items with ``split`` set to train/val/test; items left out of every split are dropped.

    With lists (official ``<Subset>_*.txt`` or DIRL's ``le50_*.txt``; one path or several) an item's split
    is the list naming it; listed items that are absent go to ``issues`` (or its notes when ``missing_ok``,
    or when their whole subset is absent). Without lists the test split is a deterministic
    ``test_fraction`` of source photos. ``le50`` drops composites whose mask covers more than
    ``max_fg_ratio`` of the image (DIRL's filter computed from the masks). Every item a filter leaves out (in
    neither list, or over the foreground limit) is named with its reason in ``issues`` as an exclusion (a note,
    not a bad item: ``IssueLog.exclude``), so nothing disappears silently. ``val`` is a deterministic
    ``val_fraction`` of train chosen by a hash of the source photo id, so it is stable when items are added
    and no photo is in both train and val.
    """
    log = issues if issues is not None else IssueLog("split")
    train_keys, test_keys = _read_lists(train_list, log), _read_lists(test_list, log)
    use_lists = train_list is not None or test_list is not None
    by_key = {it.key: it for it in items}
    if use_lists:
        _report_absent(by_key, {**train_keys, **test_keys}, {it.subset for it in items}, log, missing_ok)
    ratios: dict[Path, float | str] = {}  # mask -> foreground ratio, or why it failed
    lists = ", ".join(sorted(set(train_keys.values()) | set(test_keys.values()))) or "the split lists"
    out = []
    for it in items:
        if use_lists:
            if it.key in test_keys:
                if it.key in train_keys:
                    log.add(it.key, f"listed in both {train_keys[it.key]} and {test_keys[it.key]}; kept in test")
                split = "test"
            elif it.key in train_keys:
                split = "train"
            else:
                log.exclude(it.key, f"not in any split list ({lists}): left out")
                continue
        else:
            split = "test" if unit_hash(f"{it.subset}/{it.image_id}", seed, "test") < test_fraction else "train"
        if le50:
            if it.mask not in ratios:
                try:
                    ratios[it.mask] = foreground_ratio(it.mask)
                except ValueError as e:
                    ratios[it.mask] = str(e)
            r = ratios[it.mask]
            if isinstance(r, str):  # undecodable mask: every composite using it is bad
                log.add(it.key, r)
                continue
            if r > max_fg_ratio:
                log.exclude(
                    it.key,
                    f"mask {it.subset}/{MASKS}/{it.mask.name} covers {r:.1%} of the image, above "
                    f"{max_fg_ratio:.0%}: left out by the <= {max_fg_ratio:.0%} foreground filter",
                )
                continue
        if split == "train" and unit_hash(f"{it.subset}/{it.image_id}", seed, "val") < val_fraction:
            split = "val"
        out.append(replace(it, split=split))
    return out


def _report_absent(
    by_key: dict[str, IHDItem], listed: dict[str, str], present: set[str], log: IssueLog, missing_ok: bool
) -> None:
    """Record listed keys with no scanned item (skipping keys already reported as bad by the scan)."""
    known_bad = log.bad_items()
    absent_subsets: dict[str, int] = {}
    for key, src in listed.items():
        if key in by_key or key in known_bad:
            continue
        sub = key.split("/", 1)[0]
        if sub not in present:
            absent_subsets[sub] = absent_subsets.get(sub, 0) + 1
        elif missing_ok:
            log.note(key, f"listed in {src} but not found")
        else:
            log.add(key, f"listed in {src} but not found")
    for sub, n in sorted(absent_subsets.items()):
        log.note(sub, f"{n} listed composites not used: subset {sub} is not present")


def ihd_items(index: dict, data: Any, issues: IssueLog) -> tuple[list[dict], set[str]]:
    """Items to preprocess, and their keys (``HFlickr/composite_images/f1_1_1.jpg``, the names ``issues`` uses).

    Composites the scan rejects go to ``issues`` as bad; those a split filter leaves out (the <= 50 % foreground
    rule, or in no split list) as exclusions, each with its reason.
    """
    ih = data.iharmony4
    items, keys = [], set()
    for root in map(Path, index["roots"]):
        found = scan(root, issues, subsets=ih.subsets)
        if ih.split == "official":
            train, test = official_lists(root)
            found = assign_splits(found, train, test, val_fraction=data.val_fraction, seed=data.seed, issues=issues)
        elif ih.split == "le50" and ih.train_list and ih.test_list:
            found = assign_splits(
                found, ih.train_list, ih.test_list, val_fraction=data.val_fraction, seed=data.seed, issues=issues
            )
        else:  # le50 without lists, or "computed": filter <= 50 % foreground ourselves
            found = assign_splits(
                found,
                le50=True,
                val_fraction=data.val_fraction,
                seed=data.seed,
                issues=issues,
                test_fraction=data.test_fraction,
            )
        items += [
            {
                "id": it.id,
                "subset": it.subset,
                "split": it.split,
                "composite": it.composite,
                "mask": it.mask,
                "real": it.real,
                "source": "composite",
            }
            for it in found
        ]
        keys |= {it.key for it in found}
    return items, keys
