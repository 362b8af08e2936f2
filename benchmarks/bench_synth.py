"""Synthesis (``iharmony4-like`` recipe): the realism filter's early rejection against making every transfer.

    python benchmarks/bench_synth.py --profile photos-transfer --photos ../shared/data/photos/labelme --n 120

Run it in a workspace whose ``data/shards`` holds the photos (``make profile PROFILE=photos-transfer`` then
``dvc repro preprocess``). Both runs make the composites of the same ``--n`` photos with the synthesize stage's own
chunk function, in this process, on one core:

- **baseline**: ``SHIFT_SLACK = inf``, every colour transfer is made, then filtered (the recipe before the early
  rejection);
- **early rejection**: a transfer whose :func:`dirl.data.synth.predicted_shift` lies more than ``SHIFT_SLACK``
  above ``synth.realism_shift[1]`` is rejected before it is made.

Prints composites per second of each and the ratio, the accepted composites' distributions side by side (the
region's shift and region-vs-ring |Delta E|, per method) with the KS distance between the two runs, and an audit of
the baseline: of its transfers that the early rejection would skip, how many passed the filter.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from dirl.config.load import load_config
from dirl.data import build, synth
from dirl.data.compare import ks_distance, lab, ring_mask
from dirl.data.images import decode_image, decode_mask


def _stats(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per method: (region shift, region-vs-ring |Delta E|) of each composite row."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        comp, base, m = decode_image(r["image"]), decode_image(r["real"]), decode_mask(r["mask"])[0].astype(bool)
        c = lab(comp)
        fg = c[m].mean(axis=0)
        ring = ring_mask(m)
        de = float(np.linalg.norm(fg - c[ring].mean(axis=0))) if ring.any() else float("nan")
        out.setdefault(r["synth_method"], []).append((float(np.linalg.norm(fg - lab(base)[m].mean(axis=0))), de))
    return out


def _run(args: tuple, slack: float) -> tuple[list[dict], float]:
    synth.SHIFT_SLACK = slack
    t = time.perf_counter()
    out = build._synth_chunk(args)
    return [row for row, _ in out if row], time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="photos-transfer")
    ap.add_argument("--photos", default="../shared/data/photos/labelme")
    ap.add_argument("--n", type=int, default=120, help="photos (the first n rows of data/shards)")
    a = ap.parse_args()
    cfg = load_config("params.yaml", overrides={"data.photos_dir": a.photos}, profile=a.profile)
    if cfg.synth.recipe != "iharmony4-like":
        raise SystemExit(
            f"profile {a.profile}: synth.recipe is {cfg.synth.recipe!r}; the early rejection is the iharmony4-like recipe's"
        )
    sources = build.synth_sources(cfg)
    if not sources:
        raise SystemExit("data/shards holds no photos: run `dvc repro preprocess` with the profile first")
    build._init_synth(build.reference_rows(sources, seed=cfg.synth.seed, by_category=True))
    s = cfg.synth
    args = (
        sources[: a.n],
        s.per_image,
        tuple(s.methods),
        s.max_tries,
        s.seed,
        s.free_form,
        s.recolour,
    ) + build._recipe(cfg)
    slack = synth.SHIFT_SLACK
    base_rows, base_s = _run(args, float("inf"))
    early_rows, early_s = _run(args, slack)
    print(f"{min(a.n, len(sources))} photos, profile {a.profile}, SHIFT_SLACK {slack}, realism shift {s.realism_shift}")
    print("| run | composites | seconds | composites/s | x baseline |\n|---|---|---|---|---|")
    for name, rows, sec in (
        ("baseline: every transfer made", base_rows, base_s),
        ("early rejection", early_rows, early_s),
    ):
        print(
            f"| {name} | {len(rows)} | {sec:.1f} | {len(rows) / sec:.2f} | {(len(rows) / sec) / (len(base_rows) / base_s):.2f} |"
        )

    # the distributions of what was accepted, per method
    sb, se = _stats(base_rows), _stats(early_rows)
    print(
        "\n| method | n base / early | shift median base / early | KS | ring dE median base / early | KS |\n|---|---|---|---|---|---|"
    )
    for m in sorted(set(sb) | set(se)):
        b, e = np.array(sb.get(m, [(np.nan, np.nan)])), np.array(se.get(m, [(np.nan, np.nan)]))
        print(
            f"| {m} | {len(sb.get(m, []))} / {len(se.get(m, []))} | {np.median(b[:, 0]):.1f} / {np.median(e[:, 0]):.1f} | "
            f"{ks_distance(b[:, 0], e[:, 0]):.3f} | {np.nanmedian(b[:, 1]):.1f} / {np.nanmedian(e[:, 1]):.1f} | {ks_distance(b[:, 1], e[:, 1]):.3f} |"
        )

    # audit: the baseline's transfers that the early rejection would skip, and whether they passed the filter
    audit: Counter[str] = Counter()
    real_transfer = synth._transfer
    opts = build._recipe(cfg)[0]

    def audited(image, mask, method, pool, category, rng, ref=None):
        comp, params, ref, seed = real_transfer(image, mask, method, pool, category, rng, ref=ref)
        if ref is not None and synth.predicted_shift(image, mask, ref) > opts.shift[1] + slack:
            audit["skipped"] += 1
            ok = (
                synth.quality_check(image, comp, mask)[0]
                and synth.realism_check(image, comp, mask, opts.shift, opts.ring_de)[0]
            )
            audit["of which would pass"] += int(ok)
        elif ref is not None:
            audit["made"] += 1
        return comp, params, ref, seed

    synth._transfer = audited
    try:
        _run(args, float("inf"))
    finally:
        synth._transfer = real_transfer
    print(f"\naudit of the baseline's transfers: {dict(audit)}")


if __name__ == "__main__":
    main()
