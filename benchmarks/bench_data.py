"""Data benchmark: shards -> augmented batch tensors vs reading the iHarmony4 folder layout, one core.

Baseline ("folder"): what the reference loader does per item: read the composite JPEG and the mask PNG from
the iHarmony4 folder layout at their original size, then apply the same train transform (random resized crop
224 + flip + normalise). Candidate ("shards"): the same items preprocessed once into Arrow shards at the
stored size, read memory-mapped and decoded by ``dirl.data.loader.decode_row``. Both produce (B, 3, 224, 224)
float tensors in batches of 8. Also reports composites/s per synthesis method (``dirl.data.synth``).

Times are CPU seconds of this process (``time.process_time``) on one thread, so a busy shared machine does not
distort the per-core figure; wall seconds are printed beside them.

    python benchmarks/bench_data.py                        # photos from ../shared/data/photos/coco128
    python benchmarks/bench_data.py --photos DIR --n 500 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dirl.data.images import decode_image, decode_mask
from dirl.data.loader import ShardDataset
from dirl.data.preprocess import write_shards
from dirl.data.synth import METHODS, recolour_region
from dirl.data.transforms import train_transform

ROOT = Path(__file__).resolve().parents[1]


def _bench_inputs(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two real photos bundled with scikit-image, resized to ``size``, each with an ellipse mask (~25 %)."""
    from skimage import data

    def prep(img: np.ndarray, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        img = np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        m = np.zeros((size, size), np.uint8)
        cv2.ellipse(
            m, (int(centre[0] * size), int(centre[1] * size)), (int(0.3 * size), int(0.27 * size)), 0, 0, 360, 1, -1
        )
        return img, m

    image, mask = prep(data.astronaut(), (0.4, 0.6))
    ref, ref_mask = prep(data.coffee(), (0.5, 0.35))
    return image, mask, ref, ref_mask


def bench_synthesis(size: int = 256, n: int = 200, seed: int = 0, methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Composites per CPU-second of each method on one thread, at ``size`` x ``size`` with a ~25 % foreground.

    OpenCV is set to one thread for the run (and BLAS too when ``threadpoolctl`` is installed). Time is this
    process's CPU time (``time.process_time``), so other load on a shared machine does not distort the figure;
    it is what one core delivers.
    """
    image, mask, ref, ref_mask = _bench_inputs(size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(1)
        except ImportError:  # optional: only numpy's BLAS calls would use more than one thread
            limiter = None
        rates = {}
        for method in methods:
            rng = np.random.default_rng(seed)
            recolour_region(image, mask, method, rng, ref, ref_mask)  # warm-up
            t0 = time.process_time()
            for _ in range(n):
                recolour_region(image, mask, method, rng, ref, ref_mask)
            rates[method] = n / max(time.process_time() - t0, 1e-9)
        if limiter is not None:
            limiter.restore_original_limits()
    finally:
        cv2.setNumThreads(threads)
    return rates


def make_folder_layout(photos: Path, dest: Path, n: int) -> list[tuple[Path, Path]]:
    """Hard-link n photos + masks into ``dest/HPhotos/{composite_images,masks}`` (iHarmony4 naming)."""
    pairs = []
    for sub in ("composite_images", "masks"):
        (dest / "HPhotos" / sub).mkdir(parents=True, exist_ok=True)
    images = sorted((photos / "images").iterdir())
    for i in range(n):  # cycles through the folder when it holds fewer than n photos
        img = images[i % len(images)]
        mask = photos / "masks" / f"{img.stem}.png"
        if not mask.exists():
            continue
        comp = dest / "HPhotos" / "composite_images" / f"p{i}_1_1.jpg"
        m = dest / "HPhotos" / "masks" / f"p{i}_1.png"
        for src, dst in ((img, comp), (mask, m)):
            try:
                os.link(src, dst)
            except OSError:
                dst.write_bytes(src.read_bytes())
        pairs.append((comp, m))
    return pairs


def batches_from_folder(pairs, size: int, batch: int, rng) -> int:
    n = 0
    for i in range(0, len(pairs), batch):
        xs, ms = [], []
        for comp, mask in pairs[i : i + batch]:
            img = decode_image(comp)  # original size, as the reference loader reads it
            m, _ = decode_mask(mask)
            x, y = train_transform(img, m, size, rng)
            xs.append(x)
            ms.append(y)
        torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ms))
        n += len(xs)
    return n


def batches_from_shards(folder: Path, size: int, batch: int) -> int:
    ds = ShardDataset(folder, "train", size, train=True, seed=0)
    n = 0
    for b in ds.iter_batches(batch, shuffle=True, drop_last=False):
        n += b["image"].shape[0]
    return n


def timed(fn, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn(*args)
    return n, time.process_time() - c0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--photos",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "photos" / "coco128",
        help="folder with images/ + masks/ (default: ../shared/data/photos/coco128, COCO photos "
        "at their original ~640x480 like HCOCO, iHarmony4's largest subset)",
    )
    ap.add_argument("--n", type=int, default=400, help="items (default %(default)s)")
    ap.add_argument("--size", type=int, default=224, help="train crop size (default %(default)s)")
    ap.add_argument("--stored-size", type=int, default=256, help="shard stored size (default %(default)s)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--synth-n", type=int, default=100, help="composites per synthesis method")
    ap.add_argument("--out", type=Path, help="append the result table to this markdown file")
    args = ap.parse_args()
    if not (args.photos / "images").is_dir():
        sys.exit(f"{args.photos}: need a folder with images/ + masks/ (pass --photos)")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_folder_layout(args.photos, tmp / "ihd", args.n)
        items = [{"id": c.stem, "subset": "HPhotos", "split": "train", "composite": c, "mask": m} for c, m in pairs]
        write_shards(items, tmp / "shards", size=args.stored_size, workers=1, max_bad_fraction=1.0, progress=False)
        batches_from_shards(tmp / "shards", args.size, args.batch)  # warm the page cache for both
        batches_from_folder(pairs[:16], args.size, args.batch, np.random.default_rng(0))
        n_f, cpu_f, wall_f = timed(batches_from_folder, pairs, args.size, args.batch, np.random.default_rng(0))
        n_s, cpu_s, wall_s = timed(batches_from_shards, tmp / "shards", args.size, args.batch)

    rows = [
        ("folder layout, original size (baseline)", n_f, cpu_f, wall_f),
        (f"Arrow shards @ {args.stored_size}", n_s, cpu_s, wall_s),
    ]
    base = n_f / cpu_f
    lines = [
        f"### bench_data — {dt.date.today()} — {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
        f"`python benchmarks/bench_data.py --n {args.n} --size {args.size}` ({args.photos.name} photos, one thread)",
        "",
        "| loader (to augmented batch tensors) | items | img/s per core (CPU time) | wall img/s | ratio vs baseline |",
        "|---|---|---|---|---|",
    ]
    for name, n, cpu, wall in rows:
        lines.append(f"| {name} | {n} | {n / cpu:.0f} | {n / wall:.0f} | {(n / cpu) / base:.2f}x |")
    rates = bench_synthesis(size=256, n=args.synth_n)
    lines += ["", "| synthesis method (256², ~25 % fg) | composites/s per core |", "|---|---|"]
    lines += [f"| {m} | {r:.0f} |" for m, r in rates.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
