"""Writes that never leave a half-written file or folder, and file digests: every output goes through here.

    write_json_atomic(path, obj)          JSON, via a temp file in the same folder + fsync + os.replace
    write_text_atomic(path, text)         text (YAML, CSV, Markdown)
    with atomic_path(path) as tmp: ...    anything a library writes to a path (torch.save, a PNG, Arrow)
    with building_into(out) as tmp: ...      a whole folder, built beside ``out`` and swapped in on success
    swap_in(new, out)                     replace folder ``out`` by the complete folder ``new``
    remove_stale(out)                     work folders (``.<name>.tmp-<pid>`` / ``.old-<pid>``) of killed runs
    sha256_file(path)                     hex digest, read in 1 MiB chunks

A reader sees the old content or the new, never a mixture; a failed or killed write leaves the old in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix, so writers that look at it are happy); on a clean exit
    it is fsynced and renamed over ``path``, on an error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def remove_stale(out_dir: str | os.PathLike) -> None:
    """Remove work folders of earlier interrupted runs into the same ``out_dir``."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(tmp|old)-.+")
    for p in out_dir.parent.iterdir():
        if p.is_dir() and pattern.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)


def swap_in(new: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Replace ``out_dir`` by the complete folder ``new``; the old one is deleted only afterwards."""
    new, out_dir = Path(new), Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(new, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(out_dir: str | os.PathLike) -> Path:
    """A fresh empty work folder ``.<name>.tmp-<pid>`` beside ``out_dir`` (stale ones of killed runs removed)."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def building_into(out_dir: str | os.PathLike) -> Iterator[Path]:
    """``with building_into(out) as tmp``: build the new folder in ``tmp``; a clean exit swaps it in as ``out``,
    an error removes it and leaves ``out`` as it was."""
    tmp = staging_dir(out_dir)
    try:
        yield tmp
        swap_in(tmp, Path(out_dir).absolute())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a copy where links fail), creating the parent folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` to ``dst`` with hard links (a copy where links fail): instant, no extra space."""
    shutil.copytree(src, dst, copy_function=lambda a, b: link_or_copy(Path(a), Path(b)), symlinks=True)
