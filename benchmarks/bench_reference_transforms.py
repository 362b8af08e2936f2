"""How the reference's test resize and training-row storage move one fixed model's AP / F1 / IoU on a genuine set.

    python benchmarks/bench_reference_transforms.py --model results/train/model.pt --set ../shared/data/ihd_dev

Two changes of the `iharmony4-reference` profile, each measured on the same fixed model and the same images, beside
the centred prior on the same inputs (the baseline row of each pair is today's default):

1. test resize (`evaluate.interpolation`): `auto` (the area filter when shrinking by more than 1.25x; the baseline)
   against `bilinear` (the reference's plain bilinear resize of image and mask, the mask cut at 0.5), evaluated as
   the evaluate stage does, from the original composite straight to the input size;
2. training rows (`data.keep_aspect`): every composite stored as a training row would be (`stored` px: squashed to a
   square, the baseline, or shortest side kept at `stored` with the aspect kept), then `views` random resized crops
   + flips per image exactly as training draws them (same seeds in both), scored by the model: what the model is
   shown during training under each storage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dirl.data.images import resize_pair, shortest_side_hw  # noqa: E402
from dirl.data.transforms import train_transform  # noqa: E402
from dirl.lifecycle.evaluate import evaluate_model, evaluate_set, ihd_set  # noqa: E402
from dirl.metrics import MetricAccumulator  # noqa: E402
from dirl.weights import load_weights  # noqa: E402


def _fmt(m: dict) -> str:
    return f"AP {m['AP']:6.2f}  F1 {m['F1']:.4f}  IoU {m['IoU']:6.2f}"


def train_views(model, evalset, size: int, stored: int, keep_aspect: bool, views: int) -> tuple[dict, dict]:
    """Model and prior metrics over ``views`` training crops per image from rows stored as preprocess stores them."""

    def batches():
        for i in range(len(evalset)):
            img, mask = evalset.load(i)
            h, w = mask.shape
            target = shortest_side_hw(h, w, stored) if keep_aspect else (stored, stored)
            s_img, s_mask = resize_pair(img, mask, target)
            xs, ms = [], []
            for v in range(views):
                x, m = train_transform(s_img, s_mask, size, np.random.default_rng([0, i, v]))
                xs.append(x)
                ms.append(m)
            yield {
                "image": torch.from_numpy(np.stack(xs)),
                "mask": torch.from_numpy(np.stack(ms)),
                "id": [f"{evalset.ids[i]}#{v}" for v in range(views)],
            }

    prior = MetricAccumulator()
    model_m, _, _ = evaluate_model(model, batches(), "cpu", baseline=prior)
    return model_m, prior.compute()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a dirl weights file (results/train/model.pt)")
    ap.add_argument("--set", required=True, help="an iHarmony4-layout folder (../shared/data/ihd_dev)")
    ap.add_argument("--stored", type=int, default=256, help="data.stored_size of the training rows")
    ap.add_argument("--views", type=int, default=4, help="training crops per image")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, info = load_weights(args.model)
    size = int(info["input_size"])
    evalset = ihd_set(args.set)
    out: dict = {
        "model": args.model,
        "model_name": info["model"],
        "input_size": size,
        "set": args.set,
        "n": len(evalset),
        "stored": args.stored,
        "views": args.views,
    }
    print(f"{info['model']} at {size} px on {len(evalset)} composites of {args.set}")
    print("1. test resize (evaluate.interpolation), from the original composite to the input size")
    for interp in ("auto", "bilinear"):
        evalset.interpolation = interp
        r = evaluate_set(model, evalset, size, 8, progress=False)
        out[f"resize_{interp}"] = {
            "model": {k: r["model"][k] for k in ("AP", "F1", "IoU")},
            "prior": {k: r["centre_prior"][k] for k in ("AP", "F1", "IoU")},
            "subsets": {s: v["IoU"] for s, v in r["model"]["subsets"].items()},
        }
        print(f"  {interp:<9} model {_fmt(r['model'])}   prior {_fmt(r['centre_prior'])}")
    d = {k: out["resize_bilinear"]["model"][k] - out["resize_auto"]["model"][k] for k in ("AP", "F1", "IoU")}
    out["resize_delta"] = d
    print(f"  bilinear - auto: AP {d['AP']:+.2f}  F1 {d['F1']:+.4f}  IoU {d['IoU']:+.2f}")
    print(f"2. training rows stored at {args.stored}, {args.views} training crops per image")
    for name, keep in (("square", False), ("keep_aspect", True)):
        m, p = train_views(model, evalset, size, args.stored, keep, args.views)
        out[f"rows_{name}"] = {
            "model": {k: m[k] for k in ("AP", "F1", "IoU")},
            "prior": {k: p[k] for k in ("AP", "F1", "IoU")},
        }
        print(f"  {name:<11} model {_fmt(m)}   prior {_fmt(p)}")
    d = {k: out["rows_keep_aspect"]["model"][k] - out["rows_square"]["model"][k] for k in ("AP", "F1", "IoU")}
    out["rows_delta"] = d
    print(f"  keep_aspect - square: AP {d['AP']:+.2f}  F1 {d['F1']:+.4f}  IoU {d['IoU']:+.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
