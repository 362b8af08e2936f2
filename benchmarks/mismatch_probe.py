"""Does a model find the mismatch, or the object? Its IoU on each synthesized test composite beside its IoU on the
same photo before the region was changed (the row's ``real`` image, the same plain resize), with the centred prior.

    python benchmarks/mismatch_probe.py [--model results/train/model.pt] [--synth data/synth] [--split test] [--limit 0]

A model that scores the unaltered photos almost as well as the composites segments the photo's object (a saliency
model) and gains little from the mismatch; one that finds the mismatch scores them near zero. Prints one markdown
table: n, IoU on the composites, IoU on the unaltered photos, the prior, and the mean predicted probability inside
and outside the region on each; with ``synth.foreign_shapes``, the composites on the photo's own object and those on
another photo's outline (ids ``_x<k>``, :data:`dirl.data.build.FOREIGN_ID`) also each on their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dirl.config import Config, load_config
from dirl.data.build import FOREIGN_ID as FOREIGN
from dirl.data.loader import decode_row
from dirl.data.shards import read_table
from dirl.lifecycle.resolve import load_model_ref
from dirl.metrics import baseline_metrics, per_image_metrics

BATCH = 32


def predict(model: torch.nn.Module, xs: list[np.ndarray]) -> np.ndarray:
    """``xs``: (3, S, S) inputs -> (N, S, S) probabilities of the final map."""
    out = []
    with torch.no_grad():
        for s in range(0, len(xs), BATCH):
            y = model(torch.from_numpy(np.stack(xs[s : s + BATCH])))[0]  # (B, 3, S, S) -> final map (B, 1, S, S)
            out.append(y.float().squeeze(1).numpy())
    return np.concatenate(out)


def probe(model_ref: str, synth: Path, cfg: Config, limit: int = 0, split: str = "test") -> str:
    """The table for the ``split`` rows of ``synth`` that hold their unaltered photo (``limit`` > 0: that many)."""
    model, info = load_model_ref(model_ref, cfg)
    model.eval()
    size = int(info.get("input_size") or cfg.model.input_size)
    table = read_table(synth, split, ["id", "image", "mask", "real"])
    keep = [i for i, r in enumerate(table["real"].is_valid().to_pylist()) if r]
    if limit:
        keep = keep[:: max(1, len(keep) // limit)][:limit]
    comp, real, gts, ids = [], [], [], []
    for i in keep:
        row = {
            "id": table["id"][i].as_py(),
            "image": table["image"][i].as_buffer(),
            "mask": table["mask"][i].as_buffer(),
        }
        x = decode_row(row, size, train=False)  # the evaluation's plain resize
        y = decode_row({**row, "image": table["real"][i].as_buffer()}, size, train=False)
        comp.append(x["image"])  # (3, S, S)
        real.append(y["image"])  # (3, S, S): the same photo, region unchanged
        gts.append(x["mask"][0])  # (S, S)
        ids.append(row["id"])
    gt = np.stack(gts)  # (N, S, S)
    inside = gt > 0.5
    lines = [
        f"model `{model_ref}` ({info.get('model')}, {size} px) on {len(ids)} {split} rows of `{synth}` with their photo",
        "",
        "| regions | input | n | IoU | p inside | p outside |",
        "|---|---|---|---|---|---|",
    ]
    foreign = np.array([bool(FOREIGN.search(i)) for i in ids])
    groups = [("all", np.ones(len(ids), bool))]
    if foreign.any():
        groups += [("the photo's object", ~foreign), ("foreign outlines", foreign)]
    probs = {label: predict(model, xs) for label, xs in (("composite", comp), ("unaltered photo", real))}  # (N, S, S)
    for name, sel in groups:
        if not sel.any():
            continue
        for label, p in probs.items():
            iou = 100 * per_image_metrics(p[sel], gt[sel])["iou"].mean()
            pi, po = p[sel][inside[sel]].mean(), p[sel][~inside[sel]].mean()
            lines.append(f"| {name} | {label} | {int(sel.sum())} | {iou:.2f} | {pi:.2f} | {po:.2f} |")
        prior = baseline_metrics(gt[sel][:, None], [i for i, s in zip(ids, sel) if s])["IoU"]
        lines.append(f"| {name} | centred prior | {int(sel.sum())} | {prior:.2f} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="results/train/model.pt")
    ap.add_argument("--synth", type=Path, default=Path("data/synth"))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--limit", type=int, default=0, help="at most this many rows, evenly spread; 0 = all")
    a = ap.parse_args()
    print(probe(a.model, a.synth, load_config(a.params), a.limit, a.split))
