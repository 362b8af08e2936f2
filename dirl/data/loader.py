"""A plain single-process loader over the shards, for notebooks, benchmarks and evaluation.

``decode_row`` is the one function that turns a stored row into model input; every loader (this one, a torch
``DataLoader`` over :class:`ShardDataset`, a Ray Data pipeline) should map it over rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from dirl.data.images import decode_image, decode_mask
from dirl.data.shards import read_table
from dirl.data.transforms import eval_transform, train_transform

COLUMNS = ("id", "image", "mask")


def decode_row(row: Mapping[str, Any], size: int, train: bool,
               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Stored row ``{id, image: JPEG bytes, mask: PNG bytes, ...}`` -> ``{id, image (3,S,S), mask (1,S,S)}``.

    Pure: the output depends only on the row, ``size``, ``train`` and the state of ``rng`` (required when
    ``train``). Binary values may be ``bytes``, ``memoryview``, ``pyarrow.Buffer`` or a uint8 array.
    """
    name = row.get("id")
    img = decode_image(row["image"], f"{name}/image")  # (H, W, 3) uint8
    mask, _ = decode_mask(row["mask"], f"{name}/mask")  # (H, W) {0, 1}
    if train:
        if rng is None:
            raise ValueError("decode_row(train=True) needs an rng (numpy Generator)")
        x, m = train_transform(img, mask, size, rng)
    else:
        x, m = eval_transform(img, mask, size)
    return {"id": name, "image": x, "mask": m}  # (3, S, S), (1, S, S) float32


class ShardDataset(torch.utils.data.Dataset):
    """Rows of one split of a shard folder, decoded and transformed; also a torch ``Dataset``.

    Train augmentation for row ``i`` uses ``np.random.default_rng([seed, epoch, i])``: reproducible whatever
    the order, batch or ``DataLoader`` worker; call :meth:`set_epoch` to draw new crops each epoch.
    The table is memory-mapped; pickling (``DataLoader`` workers) sends only the path and reopens it.
    """

    def __init__(self, out_dir: str | Path, split: str, size: int, train: bool, seed: int = 0):
        self.out_dir, self.split, self.size, self.train, self.seed = Path(out_dir), split, size, train, seed
        self.epoch = 0
        self._open()

    def _open(self) -> None:
        table = read_table(self.out_dir, self.split, COLUMNS)
        self._ids = table.column("id").to_pylist()
        self._images = table.column("image")
        self._masks = table.column("mask")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_ids", "_images", "_masks"):
            state.pop(k)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._ids)

    def row(self, i: int) -> dict[str, Any]:
        """Stored row ``i`` (zero-copy ``pyarrow.Buffer`` values for image and mask)."""
        return {"id": self._ids[i], "image": self._images[i].as_buffer(), "mask": self._masks[i].as_buffer()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows of split {self.split!r}")
        i %= len(self)
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        return decode_row(self.row(i), self.size, self.train, rng)

    def iter_batches(self, batch_size: int, shuffle: bool = False,
                     drop_last: bool = False) -> Iterator[dict[str, Any]]:
        """Yield ``{image: (B,3,S,S) float32, mask: (B,1,S,S) float32, id: list[str]}`` tensors.

        ``shuffle`` uses a permutation drawn from ``(seed, epoch)``.
        """
        n = len(self)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if drop_last and len(idx) < batch_size:
                return
            items = [self[int(i)] for i in idx]
            yield {
                "image": torch.from_numpy(np.stack([it["image"] for it in items])),  # (B, 3, S, S)
                "mask": torch.from_numpy(np.stack([it["mask"] for it in items])),  # (B, 1, S, S)
                "id": [it["id"] for it in items],
            }


def benchmark(out_dir: str | Path, split: str, size: int, train: bool = True, limit: int = 2000) -> dict:
    """Rows/s of read + decode + transform in this process (one core: set torch/cv2 threads as wanted)."""
    ds = ShardDataset(out_dir, split, size, train)
    n = min(limit, len(ds))
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    dt = time.perf_counter() - t0
    return {"rows": n, "seconds": dt, "rows_per_s": n / dt if dt > 0 else float("inf")}
