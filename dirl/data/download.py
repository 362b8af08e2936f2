"""Fetch dataset archives, pin their checksums in a lock file, and unpack them safely.

Sources: http(s) URLs (streamed to ``<name>.part``, resumed with HTTP Range requests, retried with backoff),
local paths or ``file://`` URIs (hard-linked or copied), and object-storage URIs (``s3://``, ``gs://``, ...)
read through fsspec. iHarmony4 has no published checksums, so the size and sha256 of each archive are recorded
in a lock file the first time it is used and every later fetch of the same name must match them. The record is
made (``LockFile.record``) only once the archive has unpacked with every member's checksum verified: ``fetch``
checks against an existing entry but never creates one, so a corrupt first download never becomes the reference.

A corrupt archive (bad zip CRC, a truncated or bit-flipped .tar.gz whose gzip checksum fails, a damaged tar
header) raises :class:`CorruptArchive`, a ``ValueError`` whose one-line message names the archive and says what to
do; nothing of it is left extracted.
"""

from __future__ import annotations

import errno
import http.client
import json
import lzma
import os
import re
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dirl.data.ihd import find_root, verify_layout
from dirl.io import building_into, link_or_copy, link_tree, sha256_file, write_json_atomic  # noqa: F401 - sha256_file: also imported from here
from dirl.workspace import DOWNLOADS, RAW

CHUNK = 1 << 20  # bytes per read/write
USER_AGENT = "dirl-pipeline/0.1 (+urllib)"
MARKER = ".extracted.json"  # written inside an extracted tree; records the archive's sha256
DEFAULT_MAX_TOTAL_BYTES = 256 * 2**30  # iHarmony4 unpacks to tens of GB; far beyond that is a bomb
DEFAULT_MAX_FILES = 2_000_000  # iHarmony4 holds ~150k files
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FSSPEC_PACKAGES = {  # URI scheme -> package that gives fsspec that filesystem
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "adl": "adlfs",
    "hf": "huggingface_hub",
    "oss": "ossfs",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "webdav": "webdav4",
    "dropbox": "dropboxdrivefs",
    "gdrive": "gdrivefs",
}


class DownloadError(RuntimeError):
    """A source could not be fetched (after retries, or for a reason retrying cannot fix)."""


class ChecksumMismatch(RuntimeError):
    """An archive differs from the size/sha256 recorded for its name in the lock file."""


class UnsafeArchive(ValueError):
    """An archive member would escape the target, is a link or device, or the archive is a bomb."""


class CorruptArchive(ValueError):
    """An archive is damaged or incomplete (bad CRC, truncated, failed gzip checksum): nothing was extracted.

    ``archive`` is its path (None while unknown), ``problem`` what is wrong with it, without advice.
    """

    def __init__(self, message: str, archive: Path | None = None, problem: str | None = None):
        super().__init__(message)
        self.archive = archive
        self.problem = problem or message


_DIGESTS: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime_ns) -> sha256


def _digest(path: Path) -> str:
    """``sha256_file`` remembered per file version, so a 20 GB archive is hashed once per run, not per check."""
    st = Path(path).stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- lock file


class LockFile:
    """JSON record ``{"version": 1, "archives": {name: {source, size, sha256, recorded}}}``.

    The file is re-read before every update and written atomically, so an interrupted run never leaves
    a truncated lock behind.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> dict:
        if not self.path.exists():
            return {"version": 1, "archives": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"lock file {self.path} is not valid JSON ({e}); fix or delete it") from e
        if not isinstance(data, dict) or not isinstance(data.get("archives"), dict):
            raise ValueError(f"lock file {self.path} lacks an 'archives' mapping; fix or delete it")
        return data

    def get(self, name: str) -> dict | None:
        """The recorded entry for archive ``name``, or None."""
        return self.load()["archives"].get(name)

    def remove(self, name: str) -> None:
        """Forget archive ``name`` (the next fetch records it afresh)."""
        data = self.load()
        if data["archives"].pop(name, None) is not None:
            write_json_atomic(self.path, data)

    def check(self, name: str, path: Path, source: str, sha256: str | None = None) -> dict | None:
        """Check ``path`` against the entry for ``name`` without recording anything; returns the entry or None.

        Raises ``ChecksumMismatch`` when the size or sha256 differ from the recorded ones.
        """
        entry = self.get(name)
        if entry is not None:
            self._compare(name, Path(path), source, entry, sha256)
        return entry

    def _compare(self, name: str, path: Path, source: str, entry: dict, sha256: str | None) -> str:
        size = path.stat().st_size
        digest = sha256 or _digest(path)
        if entry.get("sha256") != digest or int(entry.get("size", -1)) != size:
            raise ChecksumMismatch(
                f"archive {name!r} ({path}) does not match {self.path}: expected sha256 "
                f"{entry.get('sha256')} ({entry.get('size')} bytes, first fetched from "
                f"{entry.get('source')}), got {digest} ({size} bytes) from {source}. If the archive was "
                f"deliberately replaced, delete the {name!r} entry from {self.path} and rerun; otherwise "
                f"delete {path} and rerun to fetch it again."
            )
        return digest

    def record(self, name: str, path: Path, source: str, sha256: str | None = None) -> dict:
        """Check ``path`` against the entry for ``name``, or record it if there is none. Returns the entry.

        Call it only once the archive has unpacked and verified (``safe_extract``), so that a corrupt download
        never becomes the reference. Raises ``ChecksumMismatch`` when the size or sha256 differ from the recorded
        ones.
        """
        path = Path(path)
        data = self.load()
        entry = data["archives"].get(name)
        if entry is not None:
            self._compare(name, path, source, entry, sha256)
            if entry.get("source") == source:
                return entry
            entry = {**entry, "source": source}  # same bytes from a new link: keep the checksum
        else:
            entry = {
                "source": source,
                "size": path.stat().st_size,
                "sha256": sha256 or _digest(path),
                "recorded": _now(),
            }
        data["archives"][name] = entry
        write_json_atomic(self.path, data)
        return entry

    verify = record  # the older name


# ---------------------------------------------------------------------------------------------- fetching


def source_name(source: str) -> str:
    """File name an archive is stored under: the last path segment of the URL or path."""
    if _URL_RE.match(source):
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(source).path)).name
    else:
        name = Path(source).name
    if not name or "." not in name:
        raise ValueError(
            f"cannot derive an archive file name from {source!r} (no file name with an extension in its "
            f"path); pass name='<archive>.zip' (or .tar.gz) explicitly"
        )
    return name


def fetch(
    source: str,
    dest_dir: Path | str,
    lock: LockFile,
    progress: bool = True,
    *,
    name: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Bring ``source`` into ``dest_dir/<name>`` and check it against ``lock``; returns the local path.

    A file already at the destination that matches its lock entry (or has none yet) is not fetched again.
    Downloads go to ``<name>.part`` and are renamed only once complete and checked; an interrupted HTTP download
    resumes from the ``.part`` file. ``retries`` counts consecutive attempts that made no progress. Nothing is
    recorded in ``lock`` here: call ``lock.record`` once the archive has extracted (``safe_extract``).
    """
    source = str(source)
    dest_dir = Path(dest_dir)
    name = name or source_name(source)
    dest = dest_dir / name
    part = dest_dir / f"{name}.part"
    if dest.exists():
        lock.check(name, dest, source)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    if source.startswith(("http://", "https://")):
        _download_http(source, part, name, progress=progress, retries=retries, timeout=timeout, backoff=backoff)
    elif source.startswith("file://") or not _URL_RE.match(source):
        local = _local_path(source)
        if local.resolve() == dest.resolve():
            lock.check(name, dest, source)
            return dest
        _copy_local(local, part, name, progress=progress)
    else:
        _download_fsspec(source, part, name, progress=progress, retries=retries, backoff=backoff)
    lock.check(name, part, source)  # on mismatch the complete .part stays for inspection
    os.replace(part, dest)
    return dest


def _local_path(source: str) -> Path:
    if source.startswith("file://"):
        parsed = urllib.parse.urlparse(source)
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"archive source {source!r}: no such file ({path})")
    return path


def _bar(name: str, progress: bool) -> tqdm:
    return tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress, leave=False)


def _copy_local(src: Path, part: Path, name: str, progress: bool) -> None:
    """Hard-link ``src`` to ``part`` (same file system) or copy it with a progress bar."""
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
        return
    except OSError:
        pass
    with open(src, "rb") as fin, open(part, "wb") as fout, _bar(name, progress) as bar:
        bar.total = src.stat().st_size
        while block := fin.read(CHUNK):
            fout.write(block)
            bar.update(len(block))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes start-end/total`` (or ``bytes */total``) -> (start, total)."""
    m = re.match(r"bytes\s+(\*|(\d+)-\d+)/(\*|\d+)", value or "")
    if not m:
        return None, None
    start = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _download_http(
    url: str, part: Path, name: str, *, progress: bool, retries: int, timeout: float, backoff: float
) -> None:
    """Stream ``url`` into ``part``, resuming with Range requests; returns when ``part`` is complete."""
    failures = 0
    with _bar(name, progress) as bar:
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            got = 0
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                    total: int | None
                    if resp.status == 206:
                        start, total = _content_range(resp.headers.get("Content-Range"))
                        if start != have:  # a range we did not ask for: start over
                            part.unlink(missing_ok=True)
                            raise ConnectionError(f"server answered range start {start}, asked {have}")
                        mode = "ab"
                    else:  # 200: the server ignored Range (or there was none): restart from zero
                        length = resp.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                        have, mode = 0, "wb"
                    bar.reset(total=total)
                    bar.update(have)
                    with open(part, mode) as f:
                        while block := resp.read(CHUNK):
                            f.write(block)
                            got += len(block)
                            bar.update(len(block))
                size = part.stat().st_size
                if total is None or size == total:
                    return
                raise ConnectionError(f"connection closed at {size} of {total} bytes")
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # nothing left past `have`: complete if sizes agree
                    _, total = _content_range(e.headers.get("Content-Range"))
                    if total == have:
                        return
                    part.unlink(missing_ok=True)
                    err: Exception = e
                elif e.code in (408, 425, 429) or e.code >= 500:
                    err = e
                else:
                    raise DownloadError(
                        f"{url}: HTTP {e.code} {e.reason}; check the URL (share links "
                        f"expire) or download the archive by hand and give its local path"
                    ) from e
            except OSError as e:  # URLError, timeouts, resets, IncompleteRead is below
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                    raise
                err = e
            except http.client.HTTPException as e:
                err = e
            failures = 0 if got else failures + 1
            if failures > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: giving up after {retries} retries without progress ({err}); "
                    f"{have} bytes kept in {part}, rerun to resume"
                ) from err
            time.sleep(backoff * 2 ** min(failures, 6))


def _fsspec_fs(uri: str):
    scheme = uri.split("://", 1)[0].lower()
    pkg = _FSSPEC_PACKAGES.get(scheme)
    try:
        import fsspec
    except ImportError as e:
        raise DownloadError(
            f"{uri}: object-storage sources need fsspec (pip install fsspec{' ' + pkg if pkg else ''})"
        ) from e
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as e:
        need = pkg or "the fsspec implementation for this scheme"
        raise DownloadError(
            f"{uri}: reading {scheme}:// needs the package {need} (pip install {need}); fsspec said: {e}"
        ) from e
    except ValueError as e:
        raise DownloadError(
            f"{uri}: fsspec knows no file system for {scheme}:// ({e}); use an http(s) URL or a local path"
        ) from e


def _download_fsspec(uri: str, part: Path, name: str, *, progress: bool, retries: int, backoff: float) -> None:
    """Copy an object-storage file into ``part``, resuming by seeking past what ``part`` already holds."""
    fs, path = _fsspec_fs(uri)
    try:
        total = int(fs.size(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"archive source {uri!r}: no such object") from e
    failures = 0
    with _bar(name, progress) as bar:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > total:
                part.unlink()
                have = 0
            bar.reset(total=total)
            bar.update(have)
            got = 0
            try:
                with fs.open(path, "rb") as src, open(part, "ab" if have else "wb") as f:
                    if have:
                        src.seek(have)
                    while block := src.read(CHUNK):
                        f.write(block)
                        got += len(block)
                        bar.update(len(block))
                if part.stat().st_size == total:
                    return
                err: Exception = ConnectionError(f"stream ended at {part.stat().st_size} of {total} bytes")
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                    raise
                err = e
            failures = 0 if got else failures + 1
            if failures > retries:
                raise DownloadError(f"{uri}: giving up after {retries} retries ({err}); rerun to resume") from err
            time.sleep(backoff * 2 ** min(failures, 6))


# ---------------------------------------------------------------------------------------------- extraction


def archive_stem(archive: Path | str) -> str:
    """``HCOCO.tar.gz`` -> ``HCOCO``: the archive name without its archive extensions."""
    name = Path(archive).name
    for ext in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _member_dest(root: Path, name: str, archive: Path) -> Path | None:
    """Destination of member ``name`` under ``root``; raises ``UnsafeArchive`` if it would escape."""
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        raise UnsafeArchive(f"{archive}: member {name!r} has a NUL byte in its name")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} would escape the target folder ('..'); refusing")
    if not parts:
        return None
    dest = root.joinpath(*parts)
    if not dest.resolve().is_relative_to(root.resolve()):
        raise UnsafeArchive(f"{archive}: member {name!r} resolves outside the target folder; refusing")
    return dest


def _copy_limited(src, dest: Path, written: int, limit: int, member: str, archive: Path) -> int:
    """Copy an open member stream to ``dest``; raises once the archive's running total passes ``limit``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while block := src.read(CHUNK):
            written += len(block)
            if written > limit:
                raise UnsafeArchive(
                    f"{archive}: unpacking member {member!r} passes max_total_bytes={limit}; "
                    f"refusing (zip bomb?). Raise the limit if the archive is genuine."
                )
            out.write(block)
    return written


def _extract_zip(archive: Path, root: Path, max_total_bytes: int, max_files: int) -> tuple[int, int]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise UnsafeArchive(f"{archive}: {len(infos)} members exceed max_files={max_files}; refusing")
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            big = max(infos, key=lambda i: i.file_size)
            raise UnsafeArchive(
                f"{archive}: declares {declared} uncompressed bytes (largest member "
                f"{big.filename!r}: {big.file_size}), above max_total_bytes={max_total_bytes}"
            )
        for info in infos:  # check every member before writing anything
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchive(f"{archive}: member {info.filename!r} is a symbolic link; refusing")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchive(f"{archive}: member {info.filename!r} is a device or special file; refusing")
            _member_dest(root, info.filename, archive)
        written = files = 0
        for info in infos:
            dest = _member_dest(root, info.filename, archive)
            if dest is None:
                continue
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:  # reading a member to its end checks its CRC-32
                written = _copy_limited(src, dest, written, max_total_bytes, info.filename, archive)
            files += 1
    return files, written


def _check_tar_end(tf: tarfile.TarFile, archive: Path) -> None:
    """After the last member only the end-of-archive zero blocks may follow, and the compressed stream must end
    cleanly: tarfile stops quietly at a damaged header (the members after it would be lost without a word), and
    a gzip/bz2/xz checksum is verified only when the stream is read to its very end."""
    f = tf.fileobj
    f.seek(tf.offset)
    zeros = 0
    while block := f.read(CHUNK):
        if block.count(0) != len(block):
            raise CorruptArchive(
                f"data after the end of the member list at byte {tf.offset} (a damaged member "
                f"header: the members after it would be lost)"
            )
        zeros += len(block)
    if zeros < tarfile.BLOCKSIZE:
        raise CorruptArchive(f"no end-of-archive marker after byte {tf.offset}: the archive is cut short")


class _TarPolicy:
    """The extraction filter for tar members (``tf.extract(m, root, filter=policy)``), called before each member
    is written.

    tarfile's ``data`` filter keeps every member inside the target (no '..', no path through a link) and refuses
    devices and FIFOs. On top of it this refuses what that filter lets through (links of any kind, even ones that
    stay inside the target; absolute names, which it would only strip of their '/'), and enforces the bomb limits:
    at most ``max_files`` members and ``max_total_bytes`` in all (a tar member's size is exact: extraction writes
    that many bytes, no more).
    """

    def __init__(self, archive: Path, max_total_bytes: int, max_files: int):
        self.archive, self.max_total_bytes, self.max_files = archive, max_total_bytes, max_files
        self.members = self.files = self.written = 0

    def __call__(self, m: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        archive = self.archive
        self.members += 1
        if self.members > self.max_files:
            raise UnsafeArchive(f"{archive}: more than max_files={self.max_files} members; refusing")
        if m.issym() or m.islnk():
            raise UnsafeArchive(
                f"{archive}: member {m.name!r} is a {'symbolic' if m.issym() else 'hard'} "
                f"link (to {m.linkname!r}); refusing"
            )
        if m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeArchive(f"{archive}: member {m.name!r} is a device or FIFO; refusing")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchive(f"{archive}: member {m.name!r} has unsupported type {m.type!r}; refusing")
        name = m.name.replace("\\", "/")  # written on Windows
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise UnsafeArchive(f"{archive}: member {m.name!r} has an absolute path; refusing to extract")
        try:
            safe = tarfile.data_filter(m.replace(name=name, deep=False) if name != m.name else m, dest)
        except tarfile.OutsideDestinationError:
            raise UnsafeArchive(f"{archive}: member {m.name!r} would escape the target folder; refusing") from None
        except tarfile.FilterError as e:
            raise UnsafeArchive(f"{archive}: member {m.name!r}: {e}; refusing") from None
        if m.isfile():
            if self.written + m.size > self.max_total_bytes:
                raise UnsafeArchive(
                    f"{archive}: member {m.name!r} ({m.size} bytes) passes "
                    f"max_total_bytes={self.max_total_bytes}; refusing"
                )
            self.written += m.size
            self.files += 1
        return safe


def _extract_tar(archive: Path, root: Path, max_total_bytes: int, max_files: int) -> tuple[int, int]:
    policy = _TarPolicy(archive, max_total_bytes, max_files)
    with tarfile.open(archive, "r:*") as tf:
        # streaming, one member at a time (extractall would first read every header: a second pass over a
        # compressed archive, and an unbounded member list before max_files could refuse it). set_attrs=False:
        # files get this machine's default mode and the extraction time, as before, not the archive's.
        for m in tf:
            tf.extract(m, root, set_attrs=False, filter=policy)
        _check_tar_end(tf, archive)
    return policy.files, policy.written


_ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _corruption(e: BaseException) -> str | None:
    """What a decompression or format error says, when ``e`` is one (None for other errors, e.g. a full disk)."""
    if isinstance(e, (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)):
        pass
    elif isinstance(e, OSError) and e.errno is None:  # gzip.BadGzipFile, bz2 "Invalid data stream"
        pass
    elif isinstance(e, CorruptArchive):
        return str(e)
    else:
        return None
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def _read_marker(target: Path) -> dict | None:
    try:
        return json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def safe_extract(
    archive: Path | str,
    target: Path | str,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    *,
    sha256: str | None = None,
) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``target``, refusing anything unsafe.

    Members that escape the target ('..', absolute paths), links, devices, more than ``max_files`` members
    or more than ``max_total_bytes`` uncompressed raise ``UnsafeArchive``. The archive is unpacked into a
    hidden temp folder beside ``target`` and renamed into place at the end, so ``target`` is either absent,
    the previous complete tree, or the new complete tree. ``target/.extracted.json`` records the archive's
    sha256 (``sha256`` saves rehashing it): rerunning with the same archive does nothing. A damaged archive (bad
    CRC, truncated, a failed gzip/bz2/xz checksum, a damaged tar header) raises ``CorruptArchive`` and leaves
    nothing extracted.
    """
    archive, target = Path(archive), Path(target)
    digest = sha256 or _digest(archive)
    marker = _read_marker(target)
    if marker is not None and marker.get("sha256") == digest:
        return target
    if target.exists() and marker is None and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(
            f"{target} exists and was not made by safe_extract (no {MARKER}); "
            f"remove it or extract {archive.name} elsewhere"
        )
    with building_into(target) as tmp:  # built beside target, swapped in only when complete
        os.chmod(tmp, 0o755)
        try:
            if zipfile.is_zipfile(archive):
                files, size = _extract_zip(archive, tmp, max_total_bytes, max_files)
            elif tarfile.is_tarfile(archive):
                files, size = _extract_tar(archive, tmp, max_total_bytes, max_files)
            elif archive.name.lower().endswith(_ARCHIVE_EXTS):
                raise CorruptArchive(
                    "not a zip or tar(.gz/.bz2/.xz) archive although its name says so (cut "
                    "short before its index, or an error page saved under its name?)"
                )
            else:
                raise ValueError(
                    f"{archive}: not a zip or tar(.gz/.bz2/.xz) archive; unpack it by hand and "
                    f"point data.iharmony4.extracted_dir at the result"
                )
        except NotImplementedError as e:  # a zip compression method Python lacks
            raise ValueError(
                f"{archive}: {e}; unpack it by hand and point data.iharmony4.extracted_dir at the result"
            ) from None
        except RuntimeError as e:
            if "encrypted" not in str(e):
                raise
            raise ValueError(
                f"{archive}: {e}; unpack it by hand and point data.iharmony4.extracted_dir at the result"
            ) from None
        except Exception as e:
            what = _corruption(e)
            if what is None:
                raise
            raise CorruptArchive(
                f"{archive}: corrupt or incomplete archive ({what}); nothing was extracted. Delete {archive} and "
                f"rerun to fetch it again (a half-finished or damaged download), or check the source",
                archive,
                what,
            ) from None
        write_json_atomic(
            tmp / MARKER,
            {"archive": archive.name, "sha256": digest, "files": files, "bytes": size, "extracted": _now()},
        )
    return target


def ingest_archives(ih: Any, issues: Any, stage: Path) -> tuple[dict, int]:
    """Fetch + extract the archives into the staging folder ``stage`` (or point at ``extracted_dir``), scan them (``ih``: the
    ``data.iharmony4`` section).

    An archive is fetched into ``data/.raw-downloads`` (so a partial download resumes after a failure) unless
    ``data/raw/archives`` holds it already; an unchanged archive's extracted tree is hard-linked from the
    previous ``data/raw`` instead of unpacked again. Its size and sha256 go into the lock file only once it has
    extracted with every checksum verified. Returns ``(index, items seen)``; the index names the roots where they
    will be once ``stage`` is swapped in as ``data/raw``.
    """
    scan_roots: list[Path] = []  # where to scan now
    roots: list[Path] = []  # where the index says they are
    if ih.extracted_dir:
        root = find_root(Path(ih.extracted_dir)).resolve()
        scan_roots.append(root)
        roots.append(root)
    elif ih.archives:
        lock = LockFile(Path(ih.lock_file))
        for src in map(str, ih.archives):
            name = source_name(src)
            kept, downloaded = RAW / "archives" / name, DOWNLOADS / name
            if kept.is_file() and not downloaded.exists():
                link_or_copy(kept, downloaded)  # already ingested: fetch() only checks it against the lock
            archive = fetch(src, DOWNLOADS, lock)
            stem = archive_stem(archive)
            target = stage / "iharmony4" / stem
            previous = RAW / "iharmony4" / stem
            if (previous / MARKER).is_file():  # safe_extract keeps it if it came from this very archive
                link_tree(previous, target)
            try:
                safe_extract(archive, target)
            except CorruptArchive as e:  # never recorded in the lock: drop the damaged copy so a rerun refetches it
                archive.unlink(missing_ok=True)
                raise CorruptArchive(
                    f"archive {name} (from {src}) is corrupt or incomplete: {e.problem}. Nothing was extracted, "
                    f"the lock file and data/raw are unchanged, and the damaged copy was deleted: rerun to fetch "
                    f"it again, or check the source if it fails the same way",
                    archive,
                    e.problem,
                ) from None
            lock.record(name, archive, src)  # only now: it has extracted, every checksum verified
            link_or_copy(archive, stage / "archives" / name)
            root = find_root(target)
            scan_roots.append(root)
            roots.append(RAW.resolve() / root.relative_to(stage))
    else:
        raise ValueError(
            "data.source=iharmony4 needs data.iharmony4.archives (URLs, paths or s3:// URIs of the archives) "
            "or data.iharmony4.extracted_dir (an extracted iHarmony4 root)"
        )
    counts: dict[str, int] = {}
    total = 0
    for root in scan_roots:
        report = verify_layout(root, issues, subsets=ih.subsets)
        for sub, c in report.get("subsets", {}).items():
            counts[sub] = counts.get(sub, 0) + c.get("composites", 0)  # every composite file, the bad ones too
            total += c.get("composites", 0)
    index = {"kind": "iharmony4", "roots": [str(r) for r in roots], "counts": counts}
    return index, total
