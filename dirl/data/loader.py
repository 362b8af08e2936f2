"""The training and validation loader over the shards: what every Ray Train worker, benchmark and notebook reads.

``decode_row`` is the one function that turns a stored row into model input. :class:`ShardDataset` holds the
composite rows of one split over several shard folders (``data/shards`` and ``data/synth``), memory-mapped.
Each epoch, :func:`epoch_order` draws one global permutation of all rows from ``(train.seed, epoch)`` and deals
it to the ranks, so every batch mixes rows from the whole split and two runs of one config read the same
batches with the same augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dirl.data.images import decode_image, decode_mask
from dirl.data.shards import read_table
from dirl.data.transforms import eval_transform, train_transform

COLUMNS = ("id", "image", "mask")


def decode_row(
    row: Mapping[str, Any], size: int, train: bool, rng: np.random.Generator | None = None, jitter: float = 0.0
) -> dict[str, Any]:
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
        x, m = train_transform(img, mask, size, rng, jitter)
    else:
        x, m = eval_transform(img, mask, size)
    return {"id": name, "image": x, "mask": m}  # (3, S, S), (1, S, S) float32


TRAIN_SOURCES = ("composite", "synthesized")  # rows a model trains, validates and is scored on


def read_rows(
    dirs: Sequence[str | Path],
    split: str,
    sources: Sequence[str] | None = TRAIN_SOURCES,
    columns: Sequence[str] = COLUMNS,
) -> tuple[pa.Table, dict[str, int]]:
    """The ``split`` rows of every shard folder (in the given order) whose ``source`` is in ``sources`` (None: all),
    as one memory-mapped table of ``columns``; and ``{folder: rows left out by their source}``. The one shard
    reader of training, validation and evaluation."""
    tables, left_out = [], {}
    for d in dirs:
        t = read_table(d, split, tuple(columns) + ("source",))
        if sources is not None:
            kept = t.filter(pc.is_in(t["source"], value_set=pa.array(list(sources))))
            left_out[str(d)], t = t.num_rows - kept.num_rows, kept
        tables.append(t.select(list(columns)))
    table = pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in columns})
    return table, left_out


def epoch_order(
    n: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    shuffle: bool = True,
    drop_last: bool = False,
    batch_size: int = 1,
) -> np.ndarray:
    """Row indices this rank reads in ``epoch``: a global permutation drawn from ``(seed, epoch)``, dealt round-robin.

    Every rank draws the same permutation of all ``n`` rows (a global shuffle, new every epoch) and takes every
    ``world``-th index from ``rank``; with ``drop_last`` each rank keeps the same whole number of batches.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    mine = order[rank::world]
    if drop_last:
        per_rank = (n // world) // batch_size * batch_size
        mine = mine[:per_rank]
    return mine


class ShardDataset(torch.utils.data.Dataset):
    """Rows of one split over shard folders, decoded and transformed; also a torch ``Dataset``.

    ``sources`` keeps only rows of those sources (default :data:`TRAIN_SOURCES`: composites; the real photos that
    synthesis starts from are not training items). Train augmentation for row ``i`` uses
    ``np.random.default_rng([seed, epoch, i])``: reproducible whatever the order, batch, rank or worker; call
    :meth:`set_epoch` to draw new crops each epoch. The tables are memory-mapped; pickling (``DataLoader``
    workers, Ray) sends only the paths and reopens them.
    """

    def __init__(
        self,
        dirs: str | Path | Sequence[str | Path],
        split: str,
        size: int,
        train: bool,
        seed: int = 0,
        sources: Sequence[str] | None = TRAIN_SOURCES,
        jitter: float = 0.0,
    ):
        self.dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
        self.split, self.size, self.train, self.seed, self.jitter = split, size, train, seed, jitter
        self.sources = tuple(sources) if sources is not None else None
        self.epoch = 0
        self._open()

    def _open(self) -> None:
        table, _ = read_rows(self.dirs, self.split, self.sources)
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

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def row(self, i: int) -> dict[str, Any]:
        """Stored row ``i`` (zero-copy ``pyarrow.Buffer`` values for image and mask)."""
        return {"id": self._ids[i], "image": self._images[i].as_buffer(), "mask": self._masks[i].as_buffer()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows of split {self.split!r}")
        i %= len(self)
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        return decode_row(self.row(i), self.size, self.train, rng, self.jitter)

    def collate(self, idx: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Rows ``idx`` as ``{image: (B,3,S,S) float32, mask: (B,1,S,S) float32, id: list[str]}`` tensors."""
        items = [self[int(i)] for i in idx]
        return {
            "image": torch.from_numpy(np.stack([it["image"] for it in items])),  # (B, 3, S, S)
            "mask": torch.from_numpy(np.stack([it["mask"] for it in items])),  # (B, 1, S, S)
            "id": [it["id"] for it in items],
        }

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
        prefetch: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """Yield this rank's batches of the epoch (see :func:`epoch_order`; ``shuffle`` draws from (seed, epoch)).

        ``prefetch`` > 0 decodes that many batches ahead in a background thread (OpenCV releases the GIL),
        overlapping decoding with the training step.
        """
        order = epoch_order(len(self), self.seed, self.epoch, rank, world, shuffle, drop_last, batch_size)
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if drop_last:
            chunks = [c for c in chunks if len(c) == batch_size]
        if prefetch <= 0:
            for idx in chunks:
                yield self.collate(idx)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="dirl-decode") as pool:
            pending = [pool.submit(self.collate, c) for c in chunks[:prefetch]]
            for k in range(len(chunks)):
                batch = pending.pop(0).result()
                if k + prefetch < len(chunks):
                    pending.append(pool.submit(self.collate, chunks[k + prefetch]))
                yield batch
