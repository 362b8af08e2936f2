"""The shard format: Arrow IPC files + ``manifest.json``, written by preprocessing, read by every loader.

Layout of a shard folder::

    <out_dir>/manifest.json           rows, bytes and sha256 per shard, counts, schema version, dataset_hash
    <out_dir>/<prefix>-00000.arrow    Arrow IPC *file* format (random access, memory-mappable)
    <out_dir>/<prefix>-00001.arrow    ... a new shard every ~max_shard_bytes (default 256 MiB)

Preprocessing writes one prefix per split (``train-*.arrow``, ``val-*.arrow``, ``test-*.arrow``) so that reading
one split memory-maps whole files without copying. Each file holds record batches of ``batch_rows`` rows
(default 256) with this schema (version ``SCHEMA_VERSION``, stored in the schema metadata as
``dirl.schema_version``):

    column        type            meaning
    id            string          unique item id (e.g. ``c100_1_2`` for an iHarmony4 composite)
    subset        string          sub-dataset (HCOCO, HAdobe5k, HFlickr, Hday2night, coco128, labelme, ...)
    split         string          train | val | test
    image         binary          the composite, JPEG, RGB, height x width
    mask          binary          the inharmonious region, PNG, 1-bit gray (reads as 0/255), 255 = foreground
    real          binary, null    the harmonious original (JPEG, same size) when known
    orig_h        int32           size of the composite before resizing
    orig_w        int32
    height        int32           stored size (stored_size x stored_size, or shortest side stored_size)
    width         int32
    fg_ratio      float32         foreground fraction of the mask at the original resolution
    source        string          composite (from a real dataset) | synthesized (made by dirl.data.synth) |
                                  photo (a real photo + object mask, input of synthesis; not a training item)
    synth_method  string, null    colour-transfer method of a synthesized composite
    ref_id        string, null    id of the reference image that gave the colours, when known

Test composites of a real dataset (split ``test``, source ``composite``) may be stored at their original size
(``height``/``width`` = ``orig_h``/``orig_w``; image = the original JPEG bytes, or a lossless PNG), so that
evaluation resizes them once, as the reference does (``dirl.data.preprocess``, ``keep_test_originals``).

Files appear only complete: a shard is written to ``<name>.arrow.tmp`` and renamed on close. ``verify_shards``
checks every file against the manifest (size, sha256, rows, schema) and reports stray files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dirl.io import sha256_file, write_json_atomic

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
SOURCES = ("composite", "synthesized", "photo")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("subset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("mask", pa.binary(), nullable=False),
        pa.field("real", pa.binary(), nullable=True),
        pa.field("orig_h", pa.int32(), nullable=False),
        pa.field("orig_w", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("fg_ratio", pa.float32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("synth_method", pa.string(), nullable=True),
        pa.field("ref_id", pa.string(), nullable=True),
    ],
    metadata={"dirl.schema_version": str(SCHEMA_VERSION), "dirl.format": "dirl-shards"},
)
REQUIRED = tuple(f.name for f in SCHEMA if not f.nullable)


@dataclass
class ShardInfo:
    """One finished shard file (``file`` is relative to the shard folder)."""

    file: str
    rows: int
    bytes: int
    sha256: str
    splits: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)


class ShardWriter:
    """Write rows (dicts with the ``SCHEMA`` columns) into size-capped Arrow IPC shards.

    Usage::

        with ShardWriter(out_dir, "train") as w:
            for row in rows:
                w.write(row)
        infos = w.shards          # list[ShardInfo], also returned by close()

    A shard lives as ``<prefix>-NNNNN.arrow.tmp`` while being written and is renamed to ``.arrow`` once closed.
    On an exception inside the ``with`` block (or on ``abort()``) the open tmp file and every shard this
    writer finished are removed: a writer leaves either all of its shards or none.
    """

    def __init__(
        self, out_dir: str | os.PathLike, prefix: str = "shard", max_shard_bytes: int = 256 << 20, batch_rows: int = 256
    ):
        if batch_rows < 1 or max_shard_bytes < 1:
            raise ValueError(f"batch_rows ({batch_rows}) and max_shard_bytes ({max_shard_bytes}) must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_shard_bytes = int(max_shard_bytes)
        self.batch_rows = int(batch_rows)
        self.shards: list[ShardInfo] = []
        self._rows: list[dict[str, Any]] = []
        self._buffered = 0  # encoded bytes waiting in self._rows
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._tmp: Path | None = None
        self._counts: tuple[Counter, Counter, int] = (Counter(), Counter(), 0)
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row; a record batch is written every ``batch_rows`` rows."""
        if self._closed:
            raise RuntimeError(f"ShardWriter({self.out_dir}, {self.prefix!r}) is already closed")
        missing = [k for k in REQUIRED if row.get(k) is None]
        if missing:
            raise ValueError(f"shard row {row.get('id')!r} lacks required column(s) {missing}")
        if row["split"] not in SPLITS or row["source"] not in SOURCES:
            raise ValueError(
                f"shard row {row['id']!r}: split {row['split']!r} must be one of {SPLITS} and "
                f"source {row['source']!r} one of {SOURCES}"
            )
        self._rows.append(row)
        self._buffered += len(row["image"]) + len(row["mask"]) + len(row.get("real") or b"")
        written = self._sink.tell() if self._sink is not None else 0
        if len(self._rows) >= self.batch_rows or written + self._buffered >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._tmp = self.out_dir / f"{self.prefix}-{len(self.shards):05d}.arrow.tmp"
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._writer = pa.ipc.new_file(self._sink, SCHEMA)
        assert self._writer is not None and self._sink is not None
        batch = pa.RecordBatch.from_pylist(self._rows, schema=SCHEMA)
        self._writer.write_batch(batch)
        splits, sources, n = self._counts
        splits.update(r["split"] for r in self._rows)
        sources.update(r["source"] for r in self._rows)
        self._counts = (splits, sources, n + len(self._rows))
        self._rows, self._buffered = [], 0
        if self._sink.tell() >= self.max_shard_bytes:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        assert self._sink is not None and self._tmp is not None
        self._writer.close()
        self._sink.close()
        tmp, final = self._tmp, self._tmp.with_suffix("")  # x.arrow.tmp -> x.arrow
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        splits, sources, n = self._counts
        info = ShardInfo(
            final.name,
            n,
            tmp.stat().st_size,
            sha256_file(tmp),
            dict(sorted(splits.items())),
            dict(sorted(sources.items())),
        )
        os.replace(tmp, final)
        self.shards.append(info)
        self._writer = self._sink = self._tmp = None
        self._counts = (Counter(), Counter(), 0)

    def close(self) -> list[ShardInfo]:
        """Write what is buffered, finish the open shard and return the infos of all shards written."""
        if not self._closed:
            self._flush()
            self._finish_shard()
            self._closed = True
        return self.shards

    def abort(self) -> None:
        """Drop the buffered rows and remove the tmp file and every shard this writer has finished."""
        self._closed = True
        self._rows = []
        if self._writer is not None:
            try:
                self._writer.close()
            except (pa.ArrowException, OSError):
                pass
            if self._sink is not None:
                self._sink.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for info in self.shards:
            (self.out_dir / info.file).unlink(missing_ok=True)
        self.shards = []
        self._writer = self._sink = self._tmp = None


def _dataset_hash(shards: Sequence[ShardInfo]) -> str:
    """A content hash of the dataset: schema version + (file, rows, sha256) of each shard, in name order."""
    key = [SCHEMA_VERSION] + sorted([s.file, s.rows, s.sha256] for s in shards)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def write_manifest(out_dir: str | os.PathLike, shards: Sequence[ShardInfo], extra: dict | None = None) -> dict:
    """Write ``<out_dir>/manifest.json`` atomically and return it. No timestamps: same data, same bytes."""
    shards = sorted(shards, key=lambda s: s.file)
    splits: Counter = Counter()
    sources: Counter = Counter()
    for s in shards:
        splits.update(s.splits)
        sources.update(s.sources)
    manifest = {
        "format": "dirl-shards",
        "schema_version": SCHEMA_VERSION,
        "schema": {f.name: str(f.type) + ("?" if f.nullable else "") for f in SCHEMA},
        "rows": sum(s.rows for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "splits": dict(sorted(splits.items())),
        "sources": dict(sorted(sources.items())),
        "dataset_hash": _dataset_hash(shards),
        "shards": [asdict(s) for s in shards],
        "extra": extra or {},
    }
    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """Load ``manifest.json``; raise a clear error when it is missing, unreadable or of another version."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} holds no finished shards; run the preprocess "
            f"stage (dirl.data.preprocess) to build them"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rebuild the shards with the preprocess stage") from e
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: shard schema version {version!r}, this code reads version {SCHEMA_VERSION}; "
            f"rebuild the shards with the preprocess stage"
        )
    return manifest


def _open(path: Path) -> pa.ipc.RecordBatchFileReader:
    return pa.ipc.open_file(pa.memory_map(str(path), "r"))


def _shard_problems(out_dir: Path, s: dict, check_hash: bool) -> list[str]:
    """The problems of one shard file against its manifest entry ``s``: missing, size, sha256, rows, schema."""
    path = out_dir / s["file"]
    if not path.is_file():
        return [f"{path}: missing (listed in {MANIFEST})"]
    problems = []
    size = path.stat().st_size
    if size != s["bytes"]:
        problems.append(f"{path}: {size} bytes, manifest says {s['bytes']}")
    elif check_hash and sha256_file(path) != s["sha256"]:
        problems.append(f"{path}: sha256 differs from the manifest (file corrupted or replaced)")
    try:
        reader = _open(path)
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        problems.append(f"{path}: not a readable Arrow IPC file ({str(e).splitlines()[0] if str(e) else e!r})")
        return problems
    if rows != s["rows"]:
        problems.append(f"{path}: {rows} rows, manifest says {s['rows']}")
    if not reader.schema.equals(SCHEMA):
        problems.append(f"{path}: schema differs from shards.SCHEMA version {SCHEMA_VERSION}")
    return problems


def verify_shards(out_dir: str | os.PathLike, check_hash: bool = True) -> list[str]:
    """Check a shard folder against its manifest; return a list of problems (empty = good).

    Detects: missing or unreadable manifest, missing shard, size / sha256 / row-count / schema mismatch,
    stray ``*.tmp`` files and ``.arrow`` files the manifest does not list.
    """
    out_dir = Path(out_dir)
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    problems = []
    listed = set()
    for s in manifest["shards"]:
        listed.add(s["file"])
        problems += _shard_problems(out_dir, s, check_hash)
    for p in sorted(out_dir.iterdir()):
        if p.name.endswith(".tmp"):
            problems.append(f"{p}: stray temporary file (an interrupted write)")
        elif p.suffix == ".arrow" and p.name not in listed:
            problems.append(f"{p}: shard not listed in {MANIFEST}")
    return problems


HASH_BELOW_BYTES = 2 << 30  # check_shards hashes the shards it checks when they total less (seconds of sha256)


class ShardError(ValueError):
    """A shard folder that training cannot use; the message is one line naming the file."""


def check_shards(dirs: str | Path | Sequence[str | Path], splits: Sequence[str] | None = ("train", "val")) -> None:
    """Fail fast, before any training starts, when a shard that training reads is missing or damaged.

    For every folder in ``dirs``: its manifest must be readable, and every shard holding rows of ``splits`` (the
    train and val rows training reads; None = every shard) must exist with the manifest's size, row count and
    schema. The sha256 of those shards is checked too when they total less than ``HASH_BELOW_BYTES`` (~2 GB,
    seconds of hashing); above that only sizes, rows and schemas are checked (`dirl data verify` hashes all).
    A bad shard is a data error, not a worker fault: retrying the workers would fail the same way.

    Raises :class:`ShardError` (a ValueError) whose one-line message names the first bad file and says to run
    ``dirl data verify`` (which lists every problem).
    """
    folders = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    todo: list[tuple[Path, dict]] = []
    for folder in folders:
        try:
            manifest = read_manifest(folder)
            shards = [s for s in manifest["shards"] if splits is None or any(s["splits"].get(sp) for sp in splits)]
            if not all({"file", "bytes", "rows", "sha256"} <= set(s) for s in shards):
                raise KeyError("each shard needs file, bytes, rows and sha256")
        except (FileNotFoundError, ValueError) as e:
            raise ShardError(f"{e}; run `dirl data verify`") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise ShardError(
                f"{folder / MANIFEST}: malformed shard list ({type(e).__name__}: {e}); rebuild the "
                f"shards (`dvc repro`), then run `dirl data verify`"
            ) from None
        todo += [(folder, s) for s in shards]
    check_hash = sum(int(s["bytes"]) for _, s in todo) < HASH_BELOW_BYTES
    problems = [p for folder, s in todo for p in _shard_problems(folder, s, check_hash)]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ShardError(
            f"{problems[0]}{more}: the training data is damaged; run `dirl data verify` to list every "
            f"problem, then rebuild them (`dvc repro`)"
        )


def _shards_for(manifest: dict, split: str | None) -> list[dict]:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    return [s for s in manifest["shards"] if split is None or s["splits"].get(split, 0) > 0]


def _load(path: Path, split: str | None, s: dict, columns: Sequence[str] | None) -> pa.Table:
    table = _open(path).read_all()  # zero-copy views into the memory map
    if split is not None and s["splits"].get(split, 0) != s["rows"]:  # mixed-split shard: filter (copies)
        table = table.filter(pc.equal(table["split"], split))
    return table.select(list(columns)) if columns is not None else table


def read_table(out_dir: str | os.PathLike, split: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows (of one ``split``) as one memory-mapped Arrow table, shards in name order."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if columns is not None:
        unknown = set(columns) - set(SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown shard column(s) {sorted(unknown)}; columns are {SCHEMA.names}")
    tables = [_load(out_dir / s["file"], split, s, columns) for s in _shards_for(manifest, split)]
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def iter_rows(
    out_dir: str | os.PathLike, split: str | None = None, columns: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield rows as dicts (binary columns as ``bytes``), one record batch in memory at a time."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    for s in _shards_for(manifest, split):
        reader = _open(out_dir / s["file"])
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if split is not None:
                batch = batch.filter(pc.equal(batch.column("split"), split))
            if columns is not None:
                batch = batch.select(list(columns))
            yield from batch.to_pylist()
