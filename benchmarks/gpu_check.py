"""GPU check: what the iHarmony4 reference recipe costs on one CUDA machine, in under 8 minutes.

    make gpu-check                       # = python benchmarks/gpu_check.py --out results/gpu-check
    python benchmarks/gpu_check.py --tiny   # force the CPU size on a CUDA machine too

Measures, in one process:
1. `dirl` at 224 (the reference's model and input): training img/s in fp32 (the baseline) and in bf16 autocast +
   channels_last (ratio to fp32), inference img/s in both, peak GPU memory of a training step of each;
2. the shard loader at 224: training rows (random resized crop, flip, normalise) decoded per second from the shards
   of a synthesized iHarmony4-sized sample (photos 480-1024 px stored at shortest side 256), with all CPU cores;
3. one short epoch of the `iharmony4-reference` profile through Ray Train on that sample (the pipeline's own
   `train()`: a local Ray, one GPU worker, an MLflow SQLite store in the work folder), then the pipeline's
   evaluation of the exported model on the sample's test composites (kept at original size, bilinear resize).
Prints a table and writes ``<out>/gpu_check.json``. Without CUDA it runs everything at a tiny size (64 px, a few
steps, a small sample) and says so: those figures check that the script works, not the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_model import bench_model, machine, parse_config  # noqa: E402

from dirl.config import load_config  # noqa: E402
from dirl.data.images import encode_jpeg, encode_png  # noqa: E402
from dirl.data.loader import ShardDataset  # noqa: E402
from dirl.data.preprocess import write_shards  # noqa: E402
from dirl.models import create_model  # noqa: E402

# sizes: (input, batch, warm-up steps, timed steps, sample photos train/val/test, stored side, Ray epoch steps)
FULL = dict(size=224, batch=8, warmup=3, steps=10, n_train=512, n_val=32, n_test=64, stored=256, epoch_steps=48)
TINY = dict(size=64, batch=2, warmup=1, steps=2, n_train=16, n_val=4, n_test=4, stored=64, epoch_steps=2)


def sample_items(n_train: int, n_val: int, n_test: int, seed: int = 0, tiny: bool = False) -> list[dict]:
    """Composites of iHarmony4-like sizes (longer side 480-1024 px, 4:3 / 3:4 / 16:9; 96-160 px when tiny): a
    smooth photo-like background, one object region whose colour is shifted, as encoded bytes."""
    rng = np.random.default_rng(seed)
    items = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            long = int(rng.integers(96, 161) if tiny else rng.integers(480, 1025))
            aspect = float(rng.choice([4 / 3, 3 / 4, 16 / 9]))
            h, w = (int(long / aspect), long) if aspect > 1 else (long, int(long * aspect))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            img = np.stack([xx / w * 180 + 40, yy / h * 160 + 50, 120 + 60 * np.sin(xx / 37 + yy / 53)], -1)
            img += rng.normal(0, 6, (h, w, 3))
            mask = np.zeros((h, w), np.uint8)
            mh, mw = int(h * rng.uniform(0.2, 0.5)), int(w * rng.uniform(0.2, 0.5))
            t, left = int(rng.integers(0, h - mh)), int(rng.integers(0, w - mw))
            mask[t : t + mh, left : left + mw] = 1
            img[mask > 0] = img[mask > 0] * rng.uniform(0.7, 1.3, 3) + rng.uniform(-30, 30, 3)
            items.append(
                {
                    "id": f"{split}{i:04d}",
                    "subset": "gpucheck",
                    "split": split,
                    "composite": encode_jpeg(np.clip(img, 0, 255).astype(np.uint8)),
                    "mask": encode_png(mask),
                }
            )
    return items


def _decode_range(args: tuple) -> int:
    folder, size, lo, hi = args
    torch.set_num_threads(1)
    ds = ShardDataset([folder], "train", size, train=True, seed=0)
    for i in range(lo, hi):
        ds[i % len(ds)]
    return hi - lo


def loader_rate(folder: Path, size: int, rows: int, workers: int) -> float:
    """Training rows decoded and augmented per second by ``workers`` processes (spawned, as Ray workers are)."""
    per = -(-rows // workers)
    jobs = [(str(folder), size, k * per, min(rows, (k + 1) * per)) for k in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_decode_range, [(str(folder), size, 0, 2)] * workers)  # start-up and imports, not timed
        t0 = time.perf_counter()
        done = sum(pool.map(_decode_range, jobs))
        return done / (time.perf_counter() - t0)


def model_figures(device: str, p: dict) -> dict:
    torch.manual_seed(0)
    base = create_model("dirl")
    x = torch.randn(p["batch"], 3, p["size"], p["size"])
    y = (torch.rand(p["batch"], 1, p["size"], p["size"]) > 0.7).float()
    labels = ["fp32", "channels_last+bf16"]
    runners = bench_model(base, [parse_config(label) for label in labels], x, y, device, p["warmup"], p["steps"])
    out = {}
    for label, r in zip(labels, runners):
        peak = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            r.step("train", record=False)
            peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out[label] = {
            "train_img_s": round(r.rate("train"), 1),
            "infer_img_s": round(r.rate("infer"), 1),
            "peak_train_gib": peak,
        }
        del r.model, r.fast, r.opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def reference_epoch(work: Path, shards: Path, cuda: bool, p: dict) -> dict:
    """One short epoch of iharmony4-reference through the pipeline's train() on Ray, then its evaluation."""
    import ray

    from dirl.stages import evaluate as evaluate_stage
    from dirl.stages.train import run as train

    weights = ROOT / "data" / "weights" / "resnet34-b627a593.pth"
    overrides = {
        "model.input_size": p["size"],
        "model.pretrained": str(weights) if weights.is_file() else "",
        "model.pretrained_sha256": ""
        if not weights.is_file()
        else "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f",
        "train.epochs": 1,
        "train.max_steps_per_epoch": p["epoch_steps"],
        "train.batch_size": p["batch"],
        "cluster.address": "",
        "cluster.num_workers": 1,
        "cluster.min_workers": 0,
        "cluster.use_gpu": cuda,
        "cluster.cpus_per_worker": max(1, (os.cpu_count() or 2) - 1) if cuda else 0.5,
        "cluster.storage_path": str(work / "ray_results"),
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "mlflow.experiment": "gpu-check",
    }
    cfg = load_config(ROOT / "params.yaml", profile=ROOT / "params" / "iharmony4-reference.yaml", overrides=overrides)
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # the workspace root of this run
    t0 = time.perf_counter()
    try:
        out = train(cfg, out_dir=work / "train", data_dirs=[shards], root=work, resume=False)
    finally:
        ray.shutdown()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate_stage.run(
        cfg,
        model_ref=str(work / "train" / "model.pt"),
        out_dir=work / "evaluate",
        shard_dirs=[shards],
        log_mlflow=False,
    )
    eval_s = time.perf_counter() - t1
    row = out["history"][-1]
    return {
        "pretrained": bool(cfg.model.pretrained),
        "steps": row["steps"],
        "epoch_s": round(row["epoch_s"], 1),
        "train_img_s": round(row["images_per_s"], 1),
        "fit_s": round(out["fit_s"], 1),
        "train_stage_s": round(train_s, 1),
        "evaluate_s": round(eval_s, 1),
        "test": _test_scores(scores),
    }


def _test_scores(scores: dict) -> dict:
    """The test set's model and prior figures from the evaluate stage's return value, whatever its nesting."""
    test = scores.get("test", scores) if isinstance(scores, dict) else {}
    keep = {}
    for key in ("model", "centre_prior"):
        if isinstance(test.get(key), dict):
            keep[key] = {k: round(test[key][k], 4) for k in ("n", "AP", "F1", "IoU") if k in test[key]}
    return keep or {k: v for k, v in test.items() if isinstance(v, (int, float))}


def table(result: dict) -> str:
    lines = [f"GPU check on {result['machine']} ({result['mode']})", ""]
    m = result["model"]
    base = m["fp32"]
    lines.append(
        f"dirl at {result['size']} px, batch {result['batch']}   train img/s   x fp32   infer img/s   "
        f"x fp32   peak train GiB"
    )
    for label, r in m.items():
        lines.append(
            f"  {label:<28} {r['train_img_s']:>9.1f}   {r['train_img_s'] / base['train_img_s']:>6.2f}   "
            f"{r['infer_img_s']:>11.1f}   {r['infer_img_s'] / base['infer_img_s']:>6.2f}   "
            f"{r['peak_train_gib'] if r['peak_train_gib'] is not None else 'n/a':>14}"
        )
    ld = result["loader"]
    lines.append(
        f"loader at {result['size']} px: {ld['img_s']:.1f} img/s on {ld['workers']} processes "
        f"({ld['img_s'] / max(m['fp32']['train_img_s'], 1e-9):.2f} x the fp32 training rate)"
    )
    e = result["reference_epoch"]
    lines.append(
        f"iharmony4-reference, 1 epoch of {e['steps']} steps on Ray Train: {e['train_img_s']:.1f} img/s, "
        f"epoch {e['epoch_s']} s, train stage {e['train_stage_s']} s, evaluation {e['evaluate_s']} s "
        f"(ImageNet weights: {'yes' if e['pretrained'] else 'no, random init'})"
    )
    lines.append(f"  test: {json.dumps(e['test'])}")
    lines.append(f"total {result['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu-check"), help="folder for gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="the CPU size even where CUDA is available")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    p = FULL if cuda else TINY
    device = "cuda" if cuda else "cpu"
    why = "--tiny" if torch.cuda.is_available() else "NO CUDA"
    mode = (
        f"CUDA, {torch.cuda.get_device_name(0)}"
        if cuda
        else f"{why}: tiny size (64 px, a few steps); these figures check the script, not a GPU"
    )
    print(f"gpu-check: {mode}", flush=True)
    if not cuda:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    result: dict = {
        "machine": machine() if not cuda else f"{torch.cuda.get_device_name(0)}, {platform.node()}",
        "mode": mode,
        "date": dt.date.today().isoformat(),
        "size": p["size"],
        "batch": p["batch"],
        "torch": torch.__version__,
    }
    result["model"] = model_figures(device, p)
    print(f"gpu-check: model done ({time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="dirl-gpu-check-") as tmp:
        work = Path(tmp)
        workers = os.cpu_count() or 1
        t1 = time.perf_counter()
        write_shards(
            sample_items(p["n_train"], p["n_val"], p["n_test"], tiny=not cuda),
            work / "shards",
            size=p["stored"],
            workers=workers,
            keep_aspect=True,
            progress=False,
        )
        result["sample"] = {
            "rows": p["n_train"] + p["n_val"] + p["n_test"],
            "preprocess_s": round(time.perf_counter() - t1, 1),
        }
        rows = p["n_train"] * (2 if cuda else 1)
        result["loader"] = {
            "img_s": round(loader_rate(work / "shards", p["size"], rows, workers), 1),
            "workers": workers,
            "rows": rows,
        }
        print(f"gpu-check: loader done ({time.perf_counter() - t0:.0f} s)", flush=True)
        result["reference_epoch"] = reference_epoch(work, work / "shards", cuda, p)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"written: {out / 'gpu_check.json'}")
    return result


if __name__ == "__main__":
    main()
