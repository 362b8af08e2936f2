"""Ray Data over the Arrow IPC shards: streamed reads, one split, decoded by ``decode_row`` in ``map_batches``.

    ds = shard_dataset(["data/shards", "data/synth"], "train", size=224, train=True)
    trainer = TorchTrainer(..., datasets={"train": ds, "val": shard_dataset(dirs, "val", 224, False)})
    # in a worker:
    for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8, collate_fn=Collate()):
        batch["image"]  # (B, 3, S, S) float32,  batch["mask"]  # (B, 1, S, S) float32,  batch["id"]  # [str]

Ray Data has no Arrow IPC reader, so :class:`ArrowIPCDatasource` reads the shard files one record batch at a
time (random-access file, the split filtered and only ``id``/``image``/``mask`` kept). Which files to read comes
from each folder's ``manifest.json``: only finished shards that hold rows of the split.

Train augmentation draws a fresh ``np.random.default_rng()`` (OS entropy) per block: crops differ every epoch
but are not reproducible run to run (Ray Data schedules blocks in any order); ``ShardDataset`` is the
reproducible single-process loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import FileBasedDatasource

from dirl.data.loader import decode_row
from dirl.data.shards import SPLITS, read_manifest

COLUMNS = ["id", "image", "mask"]


class ArrowIPCDatasource(FileBasedDatasource):
    """Read Arrow IPC *file* format shards, one record batch per block, keeping rows of ``split``."""

    _FILE_EXTENSIONS = ["arrow"]

    def __init__(self, paths: str | list[str], split: str | None = None,
                 columns: Sequence[str] | None = None, **file_based_kwargs):
        super().__init__(paths, file_extensions=["arrow"], **file_based_kwargs)
        self._split = split
        self._columns = list(columns) if columns is not None else None

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        # The IPC file format keeps its footer at the end: it needs random access, not a stream.
        return filesystem.open_input_file(path)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if self._split is not None:
                batch = batch.filter(pc.equal(batch.column("split"), self._split))
            if self._columns is not None:
                batch = batch.select(self._columns)
            if batch.num_rows:
                yield pa.Table.from_batches([batch])


def shard_files(dirs: str | Path | Sequence[str | Path], split: str) -> list[str]:
    """Absolute paths of the finished shards (per each folder's manifest) holding rows of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    if not dirs:
        raise ValueError("no shard folders given: pass data/shards (and data/synth) built by the preprocess stage")
    files = []
    for d in dirs:
        d = Path(d).resolve()
        manifest = read_manifest(d)  # clear FileNotFoundError / ValueError when absent or stale
        for s in manifest["shards"]:
            if s.get("splits", {}).get(split, 0) > 0:
                path = d / s["file"]
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is listed in {d / 'manifest.json'} but missing; "
                                            f"rebuild the shards with the preprocess stage")
                files.append(str(path))
    return files


def split_rows(dirs: str | Path | Sequence[str | Path], split: str) -> int:
    """Rows of ``split`` over the shard folders, from their manifests (no file is opened)."""
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    return sum(s.get("splits", {}).get(split, 0) for d in dirs for s in read_manifest(d)["shards"])


def decode_batch(batch: dict[str, np.ndarray], size: int, train: bool, seed: int | None = None) -> dict:
    """``map_batches`` function: stored rows -> ``{id: (B,) str, image: (B,3,S,S), mask: (B,1,S,S)}`` float32."""
    rng = np.random.default_rng(seed) if train else None
    items = [decode_row({"id": i, "image": im, "mask": m}, size, train, rng)
             for i, im, m in zip(batch["id"], batch["image"], batch["mask"])]
    return {
        "id": np.array([str(it["id"]) for it in items], dtype=object),
        "image": np.stack([it["image"] for it in items]).astype(np.float32, copy=False),  # (B, 3, S, S)
        "mask": np.stack([it["mask"] for it in items]).astype(np.float32, copy=False),  # (B, 1, S, S)
    }


def shard_dataset(dirs: str | Path | Sequence[str | Path], split: str, size: int, train: bool,
                  shuffle_files: bool | None = None, seed: int = 0, decode_batch_size: int = 16,
                  num_cpus: float = 1.0):
    """A streamed Ray Dataset of one split over shard folders, decoded to model input by ``decode_row``.

    ``shuffle_files`` (default: ``train``) shuffles the file order every epoch (seeded by ``seed`` and the
    epoch); rows within a window are shuffled by ``iter_torch_batches(local_shuffle_buffer_size=...)``.
    ``num_cpus`` is the CPU share of each decode task.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    files = shard_files(dirs, split)
    if not files:
        raise ValueError(f"no shard in {[str(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs)]} "
                         f"holds rows of split {split!r}; check data.val_fraction / data.test_fraction and "
                         f"rerun the preprocess stage")
    shuffle_files = train if shuffle_files is None else shuffle_files
    source = ArrowIPCDatasource(files, split=split, columns=COLUMNS,
                                shuffle=FileShuffleConfig(seed=seed) if shuffle_files and len(files) > 1 else None)
    ds = ray.data.read_datasource(source)
    return ds.map_batches(decode_batch, fn_kwargs={"size": int(size), "train": bool(train)},
                          batch_size=decode_batch_size, batch_format="numpy", num_cpus=num_cpus)


class Collate(NumpyBatchCollateFn):
    """``iter_torch_batches(collate_fn=Collate())``: numpy columns -> image/mask tensors + a list of ids."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        return {
            "image": torch.from_numpy(np.array(batch["image"], dtype=np.float32)),  # (B, 3, S, S), writable copy
            "mask": torch.from_numpy(np.array(batch["mask"], dtype=np.float32)),  # (B, 1, S, S)
            "id": [str(i) for i in batch["id"]],
        }
