"""The data stages of ``dvc.yaml``: ingest -> preprocess -> synthesize, plus verify and show.

    ingest      data.source -> data/raw/            (sample photos, a photo folder, or iHarmony4 archives)
    preprocess  data/raw    -> data/shards/         (Arrow shards: photos or real composites, split assigned)
    synthesize  data/shards -> data/synth/          (new composites from real photos + masks)

Each stage writes ``results/<stage>/metrics.json`` (DVC metrics: items in, rows out, bad items),
``results/<stage>/summary.json`` (all figures) and ``results/<stage>/issues.json`` (every bad item with its file and
reason) and prints a one-screen summary. A stage fails only when the bad fraction
exceeds ``data.max_bad_fraction``. Outputs are built in a temporary sibling and swapped in, so a failed or
killed stage leaves the previous output intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from dirl.config import Config
from dirl.data.issues import IssueLog
from dirl.io import staging_dir, swap_in, write_json_atomic

from dirl.workspace import DOWNLOADS, RAW, RESULTS, SHARDS, SYNTH

INDEX = "index.json"


def _workers(cfg: Config) -> int:
    return cfg.cluster.data_workers or len(os.sched_getaffinity(0))



class _Reporting:
    """``with _Reporting(stage) as issues``: the stage's IssueLog, reporting to ``results/<stage>/issues.json``.

    The report of an earlier run is removed on entry, so a stale one never stays behind. The full report is
    written whatever happens: ``IssueLog.check`` writes it on success and when there are too many bad items
    (then also naming them on the console); any other failure writes what was found so far, with the error.
    """

    def __init__(self, stage: str):
        self.path = RESULTS / stage / "issues.json"
        self.path.unlink(missing_ok=True)
        self.issues = IssueLog(stage, self.path)

    def __enter__(self) -> IssueLog:
        return self.issues

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            self.issues.error = f"{kind.__name__}: {error}" if str(error) else kind.__name__
            try:
                self.issues.write()
            except OSError:
                pass  # the original error matters more


def _finish(stage: str, summary: dict, issues: IssueLog | None = None, total: int = 0) -> dict:
    out = RESULTS / stage
    out.mkdir(parents=True, exist_ok=True)
    if issues is not None:
        issues.write(out / "issues.json", total=total)
        if len(issues) or issues.notes:
            issues.print_summary(total)
    write_json_atomic(out / "summary.json", summary)
    # what `dvc metrics show` lists, in columns shared by the three data stages: items in, rows out, bad items
    write_json_atomic(out / "metrics.json", {"items": summary.get("items", summary.get("real_images", total)),
                                             "rows": summary.get("rows", summary.get("composites", summary.get(
                                                 "items"))), "bad": summary.get("bad", 0)})
    print(f"[{stage}] " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    return summary


# ----------------------------------------------------------------------------- ingest


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ingest_photos(root: Path, dest: Path, issues: IssueLog) -> dict:
    """Copy (hard-link when possible) a photo folder's images + masks into ``dest`` in the folder layout."""
    from dirl.data.images import encode_png
    from dirl.data.sources import load_photo_folder

    photos = load_photo_folder(root, verify=True)
    for entry in photos.log.issues:
        issues.add(entry["item"], entry["reason"])
    for entry in photos.log.notes:
        issues.note(entry["item"], entry["reason"])
    tmp = staging_dir(dest)
    categories = {}
    try:
        for item in photos:
            if item.image_path is not None:
                _link_or_copy(item.image_path, tmp / "images" / item.image_path.name)
                stem = item.image_path.stem
            else:
                raise ValueError(f"photo {item.id!r} has no file; photo folders must hold image files")
            mask_name = f"{item.id}.png"
            if item.mask_path is not None and item.polygons is None and item.mask_path.stem == item.id:
                _link_or_copy(item.mask_path, tmp / "masks" / mask_name)
            else:  # COCO polygons or several objects per photo: render this object's mask
                (tmp / "masks").mkdir(parents=True, exist_ok=True)
                (tmp / "masks" / mask_name).write_bytes(encode_png(item.load_mask()))
            categories[item.id] = {"image": f"images/{item.image_path.name}", "category": item.category,
                                   "photo": stem}
        write_json_atomic(tmp / "objects.json", {k: v["category"] for k, v in categories.items() if v["category"]})
        write_json_atomic(tmp / "items.json", categories)
        swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"photos": len(photos)}



def ingest(cfg: Config) -> dict:
    """Bring the configured source into ``data/raw`` and write ``data/raw/index.json`` describing it.

    The new ``data/raw`` is built in a hidden sibling (``data/.raw.tmp-<pid>``) and swapped in only once the bad
    fraction is within ``data.max_bad_fraction``: after a failure, or a kill, the previous ``data/raw`` (its
    ``index.json`` included) is left exactly as it was. ``results/ingest/issues.json`` is written either way.
    """

    t0 = time.time()
    source = cfg.data.source
    with _Reporting("ingest") as issues:
        stage = staging_dir(RAW)  # data/.raw.tmp-<pid>; work folders of killed runs removed
        try:
            if source == "sample":
                from dirl.data.sources import sample_photos

                items = sample_photos(stage / "photos", size=cfg.data.stored_size)
                index = {"kind": "photos", "root": "photos", "subset": "sample"}
                total = len(items)
            elif source == "photos":
                if not cfg.data.photos_dir:
                    raise ValueError("data.source=photos needs data.photos_dir (a folder with images/ + masks/ or "
                                     "a COCO json)")
                counts = _ingest_photos(Path(cfg.data.photos_dir), stage / "photos", issues)
                index = {"kind": "photos", "root": "photos", "subset": Path(cfg.data.photos_dir).name}
                total = counts["photos"] + len(issues)  # every item seen: the kept and the bad
            else:
                index, total = _ingest_iharmony4(cfg, issues, stage)
            issues.check(total, cfg.data.max_bad_fraction)  # writes the full report; raises TooManyBadItems
            if total == 0:
                raise ValueError(f"ingest found no items in data.source={source}; check its settings "
                                 f"(data.photos_dir, data.iharmony4.*)")
            write_json_atomic(stage / INDEX, index)
            swap_in(stage, RAW.absolute())
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if index["kind"] == "iharmony4" and not cfg.data.iharmony4.extracted_dir:
            shutil.rmtree(DOWNLOADS, ignore_errors=True)  # what it held is in data/raw/archives now
    summary = {"source": source, "items": total, "bad": len(issues), "seconds": round(time.time() - t0, 2)}
    if index["kind"] == "iharmony4":
        summary["subsets"] = index.get("counts", {})
    return _finish("ingest", summary, issues, total)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` to ``dst`` with hard links (a copy where links fail): instant, no extra space."""
    shutil.copytree(src, dst, copy_function=lambda a, b: _link_or_copy(Path(a), Path(b)), symlinks=True)


def _ingest_iharmony4(cfg: Config, issues: IssueLog, stage: Path) -> tuple[dict, int]:
    """Fetch + extract the archives into the staging folder ``stage`` (or point at ``extracted_dir``), scan them.

    An archive is fetched into ``data/.raw-downloads`` (so a partial download resumes after a failure) unless
    ``data/raw/archives`` holds it already; an unchanged archive's extracted tree is hard-linked from the
    previous ``data/raw`` instead of unpacked again. Its size and sha256 go into the lock file only once it has
    extracted with every checksum verified. Returns ``(index, items seen)``; the index names the roots where they
    will be once ``stage`` is swapped in as ``data/raw``.
    """
    from dirl.data.download import MARKER, CorruptArchive, LockFile, archive_stem, fetch, safe_extract, source_name
    from dirl.data.ihd import find_root, verify_layout

    ih = cfg.data.iharmony4
    scan_roots: list[Path] = []  # where to scan now
    roots: list[Path] = []  # where the index says they are
    if ih.extracted_dir:
        root = find_root(Path(ih.extracted_dir)).resolve()
        scan_roots.append(root)
        roots.append(root)
    elif ih.archives:
        lock = LockFile(Path(ih.lock_file))
        for src in map(str, ih.archives):
            name = source_name(src)
            kept, downloaded = RAW / "archives" / name, DOWNLOADS / name
            if kept.is_file() and not downloaded.exists():
                _link_or_copy(kept, downloaded)  # already ingested: fetch() only checks it against the lock
            archive = fetch(src, DOWNLOADS, lock)
            stem = archive_stem(archive)
            target = stage / "iharmony4" / stem
            previous = RAW / "iharmony4" / stem
            if (previous / MARKER).is_file():  # safe_extract keeps it if it came from this very archive
                _link_tree(previous, target)
            try:
                safe_extract(archive, target)
            except CorruptArchive as e:  # never recorded in the lock: drop the damaged copy so a rerun refetches it
                archive.unlink(missing_ok=True)
                raise CorruptArchive(
                    f"archive {name} (from {src}) is corrupt or incomplete: {e.problem}. Nothing was extracted, "
                    f"the lock file and data/raw are unchanged, and the damaged copy was deleted: rerun to fetch "
                    f"it again, or check the source if it fails the same way", archive, e.problem) from None
            lock.record(name, archive, src)  # only now: it has extracted, every checksum verified
            _link_or_copy(archive, stage / "archives" / name)
            root = find_root(target)
            scan_roots.append(root)
            roots.append(RAW.resolve() / root.relative_to(stage))
    else:
        raise ValueError(
            "data.source=iharmony4 needs data.iharmony4.archives (URLs, paths or s3:// URIs of the archives) "
            "or data.iharmony4.extracted_dir (an extracted iHarmony4 root)"
        )
    counts: dict[str, int] = {}
    total = 0
    for root in scan_roots:
        report = verify_layout(root, issues, subsets=ih.subsets)
        for sub, c in report.get("subsets", {}).items():
            counts[sub] = counts.get(sub, 0) + c.get("composites", 0)  # every composite file, the bad ones too
            total += c.get("composites", 0)
    index = {"kind": "iharmony4", "roots": [str(r) for r in roots], "counts": counts}
    return index, total


# ----------------------------------------------------------------------------- preprocess


MIN_SPLIT_PHOTOS = 2  # val and test each get at least this many photos (when their fraction is > 0)


def photo_splits(photos: list[str], seed: int, test_fraction: float, val_fraction: float,
                 min_photos: int = MIN_SPLIT_PHOTOS) -> dict[str, str]:
    """``{photo: split}``: whole photos go to one split, so no photo is seen in two splits.

    Photos are ranked by a seeded hash; the first ``round(test_fraction * n)`` (at least ``min_photos``) are
    test, the next ``round(val_fraction * n)`` (at least ``min_photos``) val, the rest train (at least one).
    """
    from dirl.data.ihd import unit_hash

    ranked = sorted(set(photos), key=lambda p: (unit_hash(p, seed, "split"), p))
    n = len(ranked)
    n_test = max(min_photos, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(min_photos, round(val_fraction * n)) if val_fraction > 0 else 0
    while n_test + n_val >= n and (n_test > 1 or n_val > 1):  # too few photos: keep at least one for train
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for i, p in enumerate(ranked):
        out[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def _photo_items(raw: Path, index: dict, cfg: Config, issues: IssueLog) -> list[dict]:
    from dirl.data.sources import load_photo_folder

    photos = load_photo_folder(raw / index["root"], verify=False)
    for entry in photos.log.issues:
        issues.add(entry["item"], entry["reason"])
    meta = {}
    if (raw / index["root"] / "items.json").is_file():
        meta = json.loads((raw / index["root"] / "items.json").read_text())
    photo_of = {p.id: meta.get(p.id, {}).get("photo", p.id.split("__")[0]) for p in photos}
    split_of = photo_splits(list(photo_of.values()), cfg.data.seed, cfg.data.test_fraction, cfg.data.val_fraction)
    items = []
    for p in photos:
        items.append({
            "id": p.id, "subset": p.category or index.get("subset", "photos"), "split": split_of[photo_of[p.id]],
            "composite": p.image_path, "mask": p.mask_path, "real": None, "source": "photo",
        })
    return items


def _ihd_items(index: dict, cfg: Config, issues: IssueLog) -> tuple[list[dict], set[str]]:
    """Items to preprocess, and their keys (``HFlickr/composite_images/f1_1_1.jpg``, the names ``issues`` uses).

    Composites the scan rejects go to ``issues`` as bad; those a split filter leaves out (the <= 50 % foreground
    rule, or in no split list) as exclusions, each with its reason.
    """
    from dirl.data.ihd import assign_splits, official_lists, scan

    ih = cfg.data.iharmony4
    items, keys = [], set()
    for root in map(Path, index["roots"]):
        found = scan(root, issues, subsets=ih.subsets)
        if ih.split == "official":
            train, test = official_lists(root)
            found = assign_splits(found, train, test, val_fraction=cfg.data.val_fraction, seed=cfg.data.seed,
                                  issues=issues)
        elif ih.split == "le50" and ih.train_list and ih.test_list:
            found = assign_splits(found, ih.train_list, ih.test_list, val_fraction=cfg.data.val_fraction,
                                  seed=cfg.data.seed, issues=issues)
        else:  # le50 without lists, or "computed": filter <= 50 % foreground ourselves
            found = assign_splits(found, le50=True, val_fraction=cfg.data.val_fraction, seed=cfg.data.seed,
                                  issues=issues, test_fraction=cfg.data.test_fraction)
        items += [{"id": it.id, "subset": it.subset, "split": it.split, "composite": it.composite,
                   "mask": it.mask, "real": it.real, "source": "composite"} for it in found]
        keys |= {it.key for it in found}
    return items, keys


def preprocess(cfg: Config) -> dict:
    """Decode, check, resize and shard everything in ``data/raw`` into ``data/shards``.

    The bad fraction is taken over every item seen: those stored, those found bad (at scan time or when
    decoded) and those a filter left out. ``results/preprocess/issues.json`` names each bad or left-out item
    with its reason, on success and on failure.
    """
    from dirl.data.preprocess import write_shards

    t0 = time.time()
    with _Reporting("preprocess") as issues:
        if not (RAW / INDEX).is_file():
            raise FileNotFoundError(f"{RAW / INDEX} not found: run `dvc repro ingest` (or `dirl data ingest`) first")
        index = json.loads((RAW / INDEX).read_text())
        if index["kind"] == "photos":
            items = _photo_items(RAW, index, cfg, issues)
            names = {it["id"] for it in items}
        else:
            items, names = _ihd_items(index, cfg, issues)
        dropped = len((issues.bad_items() | issues.excluded_items()) - names)  # seen, not passed on
        manifest = write_shards(items, SHARDS, size=cfg.data.stored_size, workers=_workers(cfg), issues=issues,
                                max_bad_fraction=cfg.data.max_bad_fraction, dropped=dropped, engine=cfg)
    seconds = time.time() - t0
    total = len(items) + dropped
    summary = {"items": total, "rows": manifest["rows"], "bad": len(issues),
               "excluded": len(issues.excluded_items()), "splits": manifest.get("splits", {}),
               "dataset_hash": manifest.get("dataset_hash"), "seconds": round(seconds, 2),
               "images_per_s": round(len(items) / max(seconds, 1e-9), 1)}
    return _finish("preprocess", summary, issues, total)


# ----------------------------------------------------------------------------- synthesize


def _decode_row(row: dict) -> tuple[np.ndarray, np.ndarray]:
    from dirl.data.images import decode_image, decode_mask

    return decode_image(row["image"]), decode_mask(row["mask"])[0]


_REFS: list = []
SYNTH_CHUNK = 8  # photos per task


def _init_synth(refs: list[dict]) -> None:
    """Worker set-up: decode the reference rows (:func:`_references`) once into ``_REFS``.

    The rows travel encoded (~12x smaller than decoded: one copy per worker process, or per Ray node) and are
    decoded here, identically in every process; a row that does not decode is skipped, in every process alike.
    """
    import cv2

    from dirl.data.synth import Reference

    cv2.setNumThreads(1)
    global _REFS
    _REFS = []
    for row in refs:
        try:
            image, mask = _decode_row(row)
        except Exception:
            continue
        ref = Reference(row["id"], image, mask, row.get("subset"))
        ref.split = row["split"]
        _REFS.append(ref)


def _synth_chunk(args: tuple) -> list[tuple[dict | None, str | None]]:
    """Make composites for a chunk of real rows; returns (row, None) or (None, problem) per outcome."""
    from dirl.data.images import encode_jpeg, encode_png
    from dirl.data.ihd import unit_hash
    from dirl.data.synth import free_form_mask, make_composites, recolour_image

    rows, per_image, methods, max_tries, seed, free_form, recolour = args
    out = []
    for row in rows:
        try:
            image, mask = _decode_row(row)
        except Exception as e:  # a bad stored row is reported, not fatal
            out.append((None, f"{row['id']}: {e}"))
            continue
        rng = np.random.default_rng([seed, int(unit_hash(row["id"], seed, "synth") * 2**32)])
        refs = [r for r in _REFS if r.split == row["split"]] or _REFS
        made = []  # (id, Composite, mask PNG, fg_ratio, real image bytes or None = the stored one)

        def compose(region: np.ndarray, n: int, tag: str, mask_png, fg: float) -> int:
            if recolour <= 0:  # every composite from the stored photo
                comps = make_composites(image, region, n, rng, methods=methods, refs=refs, max_tries=max_tries,
                                        category=row.get("subset"), image_id=row["id"])
                made.extend((f"{row['id']}_{tag}{k}", c, mask_png, fg, None) for k, c in enumerate(comps))
                return len(comps)
            got = 0
            for k in range(n):  # each composite from its own (possibly recoloured) version of the photo
                base = recolour_image(image, rng) if rng.random() < recolour else image
                for c in make_composites(base, region, 1, rng, methods=methods, refs=refs, max_tries=max_tries,
                                         category=row.get("subset"), image_id=row["id"]):
                    made.append((f"{row['id']}_{tag}{k}", c, mask_png, fg, None if base is image else base))
                    got += 1
            return got

        got = compose(mask, per_image, "s", row["mask"], row["fg_ratio"])
        if got < per_image:
            out.append((None, f"{row['id']}: only {got} of {per_image} composites passed the quality check"))
        for k in range(free_form):  # extra composites whose region is a random free-form blob
            ff = free_form_mask(*mask.shape, rng)
            compose(ff, 1, f"f{k}_", encode_png(ff), float(ff.mean()))
        real_jpeg = row["real"] or row["image"]
        for cid, c, mask_png, fg, base in made:
            out.append(({
                "id": cid, "subset": row["subset"], "split": row["split"],
                "image": encode_jpeg(c.image), "mask": mask_png,
                "real": real_jpeg if base is None else encode_jpeg(base),
                "orig_h": row["orig_h"], "orig_w": row["orig_w"], "height": row["height"], "width": row["width"],
                "fg_ratio": fg, "source": "synthesized", "synth_method": c.method, "ref_id": c.ref_id,
            }, None))
    return out


def _synth_sources(cfg: Config) -> list[dict]:
    """Rows to synthesize from: real photos, plus iHarmony4 real images when augment_iharmony4 is set."""
    from dirl.data.shards import iter_rows

    rows, seen_real = [], set()
    for row in iter_rows(SHARDS):
        if row["source"] == "photo":
            rows.append(row)
        elif cfg.synth.augment_iharmony4 and row["real"] is not None and row["split"] != "test":
            # test rows are kept as the benchmark's own composites (at original size): not augmented
            base = row["id"].rsplit("_", 1)[0]  # c100_1_2 -> c100_1: one real image + mask per object
            if base not in seen_real:
                seen_real.add(base)
                rows.append({**row, "id": base, "image": row["real"]})
    return rows


def _references(rows: list[dict], limit_per_split: int = 256, seed: int = 0) -> list[dict]:
    """A deterministic subset of real objects per split, used as colour-transfer references: their rows, still
    encoded (``id``, ``image``, ``mask``, ``subset``, ``split``); :func:`_init_synth` decodes them in each worker."""
    rng = np.random.default_rng(seed)
    refs = []
    for split in sorted({r["split"] for r in rows}):
        pool = [r for r in rows if r["split"] == split]
        pick = rng.permutation(len(pool))[:limit_per_split]
        refs += [{k: pool[i].get(k) for k in ("id", "image", "mask", "subset", "split")} for i in sorted(pick)]
    return refs


def synthesize(cfg: Config) -> dict:
    """Make ``synth.per_image`` new composites per real image into ``data/synth`` (Arrow shards).

    Chunks of ``SYNTH_CHUNK`` photos run on the data engine (``cluster.data_engine``, :mod:`dirl.data.engine`):
    local processes, or Ray tasks across the cluster's nodes with the references shipped once; either way this
    process writes the rows in input order, so the output is the same byte for byte. On Ray, ``data/synth`` is
    written by this process: the workspace must be on storage the nodes share.
    """
    from dirl.progress import bar as progress_bar

    from dirl.data.engine import ordered_map
    from dirl.data.shards import ShardWriter, write_manifest

    t0 = time.time()
    sources = _synth_sources(cfg)
    if not sources:
        raise ValueError(f"{SHARDS} has no real photos to synthesize from (data.source={cfg.data.source}); "
                         "use source sample/photos, or set synth.augment_iharmony4: true for iHarmony4")
    refs = _references(sources, seed=cfg.synth.seed)
    with _Reporting("synthesize") as issues:  # the full report, on success and on failure
        args = [(sources[i:i + SYNTH_CHUNK], cfg.synth.per_image, tuple(cfg.synth.methods), cfg.synth.max_tries,
                 cfg.synth.seed, cfg.synth.free_form, cfg.synth.recolour) for i in range(0, len(sources), SYNTH_CHUNK)]
        tmp = staging_dir(SYNTH)
        writers: dict[str, ShardWriter] = {}
        methods: dict[str, int] = {}
        try:
            workers = min(_workers(cfg), len(args))
            chunks = ordered_map(_synth_chunk, args, cfg, workers=workers, initializer=_init_synth, initargs=(refs,),
                                 desc="synthesize")
            with closing(chunks), progress_bar(total=len(sources), unit="img", desc="synthesize") as bar:
                for chunk, results in chunks:
                    bar.update(len(chunk[0]))
                    for row, problem in results:
                        if problem:
                            issues.add(problem.split(":")[0], problem)
                            continue
                        methods[row["synth_method"]] = methods.get(row["synth_method"], 0) + 1
                        if row["split"] not in writers:
                            writers[row["split"]] = ShardWriter(tmp, row["split"])
                        writers[row["split"]].write(row)
            shards = [info for w in writers.values() for info in w.close()]
            issues.check(len(sources), cfg.data.max_bad_fraction)
            manifest = write_manifest(tmp, shards, {"per_image": cfg.synth.per_image, "methods": methods,
                                                    "seed": cfg.synth.seed})
            swap_in(tmp, SYNTH.absolute())
        except BaseException:
            for w in writers.values():
                w.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    seconds = time.time() - t0
    summary = {"real_images": len(sources), "composites": manifest["rows"], "bad": len(issues),
               "methods": methods, "splits": manifest.get("splits", {}), "seconds": round(seconds, 2),
               "composites_per_s": round(manifest["rows"] / max(seconds, 1e-9), 1)}
    return _finish("synthesize", summary, issues, len(sources))


# ----------------------------------------------------------------------------- verify / show


class NothingToVerify(FileNotFoundError):
    """``dirl data verify`` found no shard folder to check."""


def verify(cfg: Config) -> list[str]:
    """Re-check every shard folder against its manifest; prints and returns the problems.

    Raises ``NothingToVerify`` when ``data/shards`` has no manifest (the preprocess stage has not run): a verify
    that checked nothing must not pass.
    """
    from dirl.data.shards import verify_shards

    if not (SHARDS / "manifest.json").is_file():
        raise NothingToVerify(f"nothing to verify: {SHARDS} has no manifest.json; run `dvc repro preprocess` "
                              f"(or `dirl data preprocess`) first")
    problems = []
    for folder in (SHARDS, SYNTH):
        if not (folder / "manifest.json").is_file():
            print(f"{folder}: no manifest.json (stage not run yet): skipped")
            continue
        found = verify_shards(folder)
        problems += found
        print(f"{folder}: {'OK' if not found else f'{len(found)} problem(s)'}")
        for p in found:
            print(f"  {p}")
    return problems


def show(cfg: Config, split: str = "train", n: int = 8, out: str | None = None, source: str = "synth") -> Path:
    """Contact sheet PNG of ``n`` rows from distinct photos (then methods): composite | mask | [real] | overlay."""
    from dirl.data.show import show_sheet

    folder = SYNTH if source == "synth" else SHARDS
    path = Path(out) if out else RESULTS / "show" / f"{source}-{split}.png"
    return show_sheet(folder, split, n, path, seed=cfg.data.seed)
