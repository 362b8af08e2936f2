"""Synthetic toy composites in the shard format, for tests and benchmarks that need data in seconds.

Each image is a textured background with one rectangle whose colour is shifted; the rectangle is the mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dirl.data.images import encode_jpeg, encode_png
from dirl.data.shards import ShardWriter, write_manifest


def toy_shards(
    out_dir: str | Path, n_train: int = 24, n_val: int = 4, size: int = 64, seed: int = 0, batch_rows: int = 8
) -> Path:
    """Write ``n_train`` + ``n_val`` toy composites (size x size) as a shard folder; returns ``out_dir``."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    infos = []
    for split, n in (("train", n_train), ("val", n_val)):
        with ShardWriter(out_dir, split, batch_rows=batch_rows) as w:
            for i in range(n):
                xx = np.arange(size)[None, :, None]
                img = rng.integers(40, 200, size=3) + 30 * np.sin(xx / 5.0) + rng.normal(0, 8, (size, size, 3))
                h, ww = rng.integers(size // 4, size // 2, size=2)
                top, left = rng.integers(0, size - h), rng.integers(0, size - ww)
                mask = np.zeros((size, size), np.uint8)
                mask[top : top + h, left : left + ww] = 1
                img[mask > 0] += rng.choice([-1, 1], size=3) * rng.integers(40, 80, size=3)
                w.write(
                    {
                        "id": f"{split}_{i:04d}",
                        "subset": "toy",
                        "split": split,
                        "image": encode_jpeg(np.clip(img, 0, 255).astype(np.uint8)),
                        "mask": encode_png(mask),
                        "orig_h": size,
                        "orig_w": size,
                        "height": size,
                        "width": size,
                        "fg_ratio": float(mask.mean()),
                        "source": "composite",
                    }
                )
        infos += w.shards
    write_manifest(out_dir, infos)
    return out_dir
