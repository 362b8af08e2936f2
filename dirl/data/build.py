"""Synthesis, the mechanisms of the synthesize stage (:mod:`dirl.stages.synthesize`), plus verify and show.

    synth_sources      the real rows of data/shards to synthesize from
    reference_rows     the colour-transfer references, per split
    write_composites   chunks of photos through the data engine into shard writers, in input order
    write_empty_synth  data/synth with zero rows (iHarmony4 without synth.augment_iharmony4)
    verify, show       ``dirl data verify`` and ``dirl data show``

A photo that gave fewer composites than ``synth.per_image`` (but some) is noted; one that gave none is a bad item.
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from dirl.cluster import data_workers
from dirl.config import Config
from dirl.data.engine import ordered_map
from dirl.data.ihd import unit_hash
from dirl.data.images import decode_image, decode_mask, encode_jpeg, encode_png
from dirl.data.issues import IssueLog
from dirl.data.shards import ShardInfo, ShardWriter, iter_rows, verify_shards, write_manifest
from dirl.data.show import show_sheet
from dirl.data.synth import (
    TRANSFER_METHODS,
    Imitation,
    Reference,
    category_key,
    fits_frame,
    free_form_mask,
    imitate_foreign,
    imitate_iharmony4,
    make_composites,
    recolour_image,
)
from dirl.io import staging_dir, swap_in, write_json_atomic
from dirl.progress import bar as progress_bar
from dirl.workspace import RESULTS, SHARDS, SYNTH

# a synthesized row's id: <photo>_s<k> (mixed recipe), <photo>_i<k> (iharmony4-like, on the photo's own object),
# <photo>_x<k> (synth.foreign_shapes: on another photo's outline), <photo>_f<k>_0 (synth.free_form)
FOREIGN_ID = re.compile(r"_x\d+$")

# ----------------------------------------------------------------------------- synthesize


def _decode_row(row: dict) -> tuple[np.ndarray, np.ndarray]:

    return decode_image(row["image"]), decode_mask(row["mask"])[0]


_REFS: list = []
SHORT = "short: "  # a photo that gave fewer composites than synth.per_image, but some: noted, not a bad item
SYNTH_CHUNK = 8  # photos per task


def _init_synth(refs: list[dict]) -> None:
    """Worker set-up: decode the reference rows (:func:`reference_rows`) once into ``_REFS``.

    The rows travel encoded (~12x smaller than decoded: one copy per worker process, or per Ray node) and are
    decoded here, identically in every process; a row that does not decode is skipped, in every process alike.
    """
    import cv2

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
    rows, per_image, methods, max_tries, seed, free_form, recolour, *recipe = args
    imitation = recipe[0] if recipe else None  # a dirl.data.synth.Imitation: the iharmony4-like recipe
    out: list[tuple[dict | None, str | None]] = []
    for row in rows:
        try:
            image, mask = _decode_row(row)
        except Exception as e:  # a bad stored row is reported, not fatal
            out.append((None, f"{row['id']}: {e}"))
            continue
        rng = np.random.default_rng([seed, int(unit_hash(row["id"], seed, "synth") * 2**32)])
        refs = [r for r in _REFS if r.split == row["split"]] or _REFS
        made: list[tuple] = []  # (id, Composite, mask PNG, fg_ratio, real image bytes or None = the stored one)

        def compose(region: np.ndarray, n: int, tag: str, mask_png, fg: float) -> int:
            if recolour <= 0:  # every composite from the stored photo
                comps = make_composites(
                    image,
                    region,
                    n,
                    rng,
                    methods=methods,
                    refs=refs,
                    max_tries=max_tries,
                    category=row.get("subset"),
                    image_id=row["id"],
                )
                made.extend((f"{row['id']}_{tag}{k}", c, mask_png, fg, None) for k, c in enumerate(comps))
                return len(comps)
            got = 0
            for k in range(n):  # each composite from its own (possibly recoloured) version of the photo
                base = recolour_image(image, rng) if rng.random() < recolour else image
                for c in make_composites(
                    base,
                    region,
                    1,
                    rng,
                    methods=methods,
                    refs=refs,
                    max_tries=max_tries,
                    category=row.get("subset"),
                    image_id=row["id"],
                ):
                    made.append((f"{row['id']}_{tag}{k}", c, mask_png, fg, None if base is image else base))
                    got += 1
            return got

        fits = imitation is None or fits_frame(mask, imitation)
        if not fits:  # by design, not a bad photo: noted; its foreign-outline composites are still made
            out.append(
                (None, f"{SHORT}{row['id']}: skipped: no crop keeps its region within synth.max_border of the frame")
            )
        elif imitation is not None:
            for k, (c, region, base) in enumerate(
                imitate_iharmony4(
                    image,
                    mask,
                    per_image,
                    rng,
                    refs=refs,
                    category=row.get("subset"),
                    image_id=row["id"],
                    opts=imitation,
                    max_tries=max_tries,
                    recolour=recolour,
                )
            ):
                made.append((f"{row['id']}_i{k}", c, encode_png(region), float(region.mean()), base))
        else:
            compose(mask, per_image, "s", row["mask"], row["fg_ratio"])
        got = len(made)
        if fits and got == 0:  # nothing from this photo: a bad item
            out.append((None, f"{row['id']}: none of {per_image} composites passed the quality check"))
        elif fits and got < per_image:  # some: the photo is used, the shortfall noted (SHORT), not counted as bad
            out.append((None, f"{SHORT}{row['id']}: only {got} of {per_image} composites passed the quality check"))
        if imitation is not None and imitation.foreign:  # extra composites on another photo's object outline
            for k, (c, region, base) in enumerate(
                imitate_foreign(
                    image,
                    imitation.foreign,
                    rng,
                    shapes=refs,
                    refs=refs,
                    image_id=row["id"],
                    opts=imitation,
                    max_tries=max_tries,
                    recolour=recolour,
                )
            ):
                made.append((f"{row['id']}_x{k}", c, encode_png(region), float(region.mean()), base))
        for k in range(free_form):  # extra composites whose region is a random free-form blob
            ff = free_form_mask(mask.shape[0], mask.shape[1], rng)
            compose(ff, 1, f"f{k}_", encode_png(ff), float(ff.mean()))
        real_jpeg = row["real"] or row["image"]
        for cid, c, mask_png, fg, base in made:
            out.append(
                (
                    {
                        "id": cid,
                        "subset": row["subset"],
                        "split": row["split"],
                        "image": encode_jpeg(c.image),
                        "mask": mask_png,
                        "real": real_jpeg if base is None else encode_jpeg(base),
                        "orig_h": row["orig_h"],
                        "orig_w": row["orig_w"],
                        "height": row["height"],
                        "width": row["width"],
                        "fg_ratio": fg,
                        "source": "synthesized",
                        "synth_method": c.method,
                        "ref_id": c.ref_id,
                    },
                    None,
                )
            )
    return out


def synth_sources(cfg: Config) -> list[dict]:
    """Rows to synthesize from: real photos (every split: the sample's and a photo folder's val and test sets are
    synthesized), plus, when ``synth.augment_iharmony4`` is set, the real image + mask behind each iHarmony4
    *training* composite. iHarmony4's validation and test sets stay its own genuine composites: a synthesized row
    never reaches them."""

    rows, seen_real = [], set()
    for row in iter_rows(SHARDS):
        if row["source"] == "photo":
            rows.append(row)
        elif cfg.synth.augment_iharmony4 and row["real"] is not None and row["split"] == "train":
            base = row["id"].rsplit("_", 1)[0]  # c100_1_2 -> c100_1: one real image + mask per object
            if base not in seen_real:
                seen_real.add(base)
                rows.append({**row, "id": base, "image": row["real"]})
    return rows


def _recipe(cfg: Config) -> tuple:
    """The synthesis task's recipe argument: ``()`` for ``mixed`` (the tasks' arguments stay as they were), or
    ``(Imitation,)`` for ``iharmony4-like``."""
    if cfg.synth.recipe != "iharmony4-like":
        return ()

    s = cfg.synth
    return (
        Imitation(
            area=(s.target_area[0], s.target_area[1]),
            area_range=(s.area_range[0], s.area_range[1]),
            centre=(s.target_centre[0], s.target_centre[1], s.target_centre[2]),
            max_zoom=s.max_zoom,
            max_border=s.max_border,
            retouch_share=s.retouch_share,
            shift=(s.realism_shift[0], s.realism_shift[1]),
            ring_de=(s.realism_ring[0], s.realism_ring[1]),
            same_category=s.same_category,
            methods=tuple(m for m in s.methods if m in TRANSFER_METHODS) or TRANSFER_METHODS,
            foreign=s.foreign_shapes,
        ),
    )


def reference_rows(
    rows: list[dict], limit_per_split: int = 256, seed: int = 0, by_category: bool = False
) -> list[dict]:
    """A deterministic subset of real objects per split, used as colour-transfer references: their rows, still
    encoded (``id``, ``image``, ``mask``, ``subset``, ``split``); :func:`_init_synth` decodes them in each worker.
    ``by_category``: the subset is spread over the categories (:func:`dirl.data.synth.category_key` of ``subset``),
    round robin in a seeded order, so that rare categories keep references too."""
    rng = np.random.default_rng(seed)
    refs = []
    for split in sorted({r["split"] for r in rows}):
        pool = [r for r in rows if r["split"] == split]
        pick: list[int] = [int(i) for i in rng.permutation(len(pool))[:limit_per_split]]
        if by_category:
            order = rng.permutation(len(pool))
            by: dict = {}
            for i in order:
                by.setdefault(category_key(pool[i].get("subset")), []).append(int(i))
            queues = list(by.values())
            pick = []
            while len(pick) < min(limit_per_split, len(pool)):
                for q in queues:
                    if q and len(pick) < limit_per_split:
                        pick.append(q.pop(0))
        refs += [{k: pool[i].get(k) for k in ("id", "image", "mask", "subset", "split")} for i in sorted(pick)]
    return refs


def write_composites(
    cfg: Config, sources: list[dict], refs: list[dict], out: Path, issues: IssueLog
) -> tuple[list[ShardInfo], dict[str, int]]:
    """Make ``synth.per_image`` composites per row of ``sources`` into shards under ``out``, one writer per split;
    returns the shards written and the composites per method. A photo with none is added to ``issues`` as bad, a
    photo short of ``synth.per_image`` noted. On a failure the writers' shards are removed.

    Chunks of ``SYNTH_CHUNK`` photos run on the data engine (``cluster.data_engine``, :mod:`dirl.data.engine`):
    local processes, or Ray tasks across the cluster's nodes with the references (``refs``, :func:`reference_rows`)
    shipped once; either way this process writes the rows in input order, so the output is the same byte for byte.
    On Ray, ``out`` is written by this process: the workspace must be on storage the nodes share.
    """
    args = [
        (
            sources[i : i + SYNTH_CHUNK],
            cfg.synth.per_image,
            tuple(cfg.synth.methods),
            cfg.synth.max_tries,
            cfg.synth.seed,
            cfg.synth.free_form,
            cfg.synth.recolour,
        )
        + _recipe(cfg)
        for i in range(0, len(sources), SYNTH_CHUNK)
    ]
    writers: dict[str, ShardWriter] = {}
    methods: dict[str, int] = {}
    try:
        workers = min(data_workers(cfg), len(args))
        chunks = ordered_map(
            _synth_chunk, args, cfg, workers=workers, initializer=_init_synth, initargs=(refs,), desc="synthesize"
        )
        with closing(chunks), progress_bar(total=len(sources), unit="img", desc="synthesize") as bar:
            for chunk, results in chunks:
                bar.update(len(chunk[0]))
                for row, problem in results:
                    if problem and problem.startswith(SHORT):
                        problem = problem[len(SHORT) :]
                        issues.note(problem.split(":")[0], problem)
                        continue
                    if problem:
                        issues.add(problem.split(":")[0], problem)
                        continue
                    methods[row["synth_method"]] = methods.get(row["synth_method"], 0) + 1
                    if row["split"] not in writers:
                        writers[row["split"]] = ShardWriter(out, row["split"])
                    writers[row["split"]].write(row)
        return [info for w in writers.values() for info in w.close()], methods
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def synthesizes(cfg: Config) -> bool:
    """False when the configured source gives synthesis nothing to do by design: iHarmony4 composites without
    ``synth.augment_iharmony4``."""
    return cfg.data.source != "iharmony4" or cfg.synth.augment_iharmony4


def write_empty_synth(cfg: Config, t0: float) -> dict:
    """``data/synth`` as a valid shard folder with zero rows, so that every later stage runs unchanged."""
    RESULTS.joinpath("synthesize", "issues.json").unlink(missing_ok=True)
    tmp = staging_dir(SYNTH)
    try:
        write_manifest(
            tmp,
            [],
            {
                "per_image": cfg.synth.per_image,
                "methods": {},
                "seed": cfg.synth.seed,
                "skipped": "data.source=iharmony4 with synth.augment_iharmony4: false",
            },
        )
        swap_in(tmp, SYNTH.absolute())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        "[synthesize] 0 composites: data.source=iharmony4 trains on its own composites "
        "(set synth.augment_iharmony4: true to add synthesized ones to the training split)",
        flush=True,
    )
    summary = {
        "real_images": 0,
        "composites": 0,
        "bad": 0,
        "methods": {},
        "splits": {},
        "seconds": round(time.time() - t0, 2),
        "skipped": "synth.augment_iharmony4 is false",
    }
    out = RESULTS / "synthesize"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", {"items": 0, "rows": 0, "bad": 0})
    return summary


# ----------------------------------------------------------------------------- verify / show


class NothingToVerify(FileNotFoundError):
    """``dirl data verify`` found no shard folder to check."""


def verify(cfg: Config) -> list[str]:
    """Re-check every shard folder against its manifest; prints and returns the problems.

    Raises ``NothingToVerify`` when ``data/shards`` has no manifest (the preprocess stage has not run): a verify
    that checked nothing must not pass.
    """

    if not (SHARDS / "manifest.json").is_file():
        raise NothingToVerify(
            f"nothing to verify: {SHARDS} has no manifest.json; run `dvc repro preprocess` "
            f"(or `dirl data preprocess`) first"
        )
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
    folder = SYNTH if source == "synth" else SHARDS
    path = Path(out) if out else RESULTS / "show" / f"{source}-{split}.png"
    return show_sheet(folder, split, n, path, seed=cfg.data.seed)
