"""Archive fetching (real HTTP server on loopback, local files, fsspec memory fs), lock file, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dirl.data.download import (
    MARKER,
    ChecksumMismatch,
    CorruptArchive,
    DownloadError,
    LockFile,
    UnsafeArchive,
    archive_stem,
    fetch,
    safe_extract,
    sha256_file,
)
from dirl.data.ihd import find_root, scan
from dirl.data.issues import IssueLog
from helpers.builders import UNSAFE_ARCHIVES, ihd_tree, make_tar, make_zip

FAST = dict(progress=False, retries=3, timeout=5.0, backoff=0.01)


# ---------------------------------------------------------------------------------------------- HTTP server


@dataclass
class ServerState:
    """What the test server serves and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)  # one {"path", "range"} per GET
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping (once)
    fail: dict[str, int] = field(default_factory=dict)  # path -> how many 503s to answer first
    ignore_range: bool = False
    base: str = ""


def _handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            state.log.append({"path": self.path, "range": self.headers.get("Range")})
            if state.fail.get(self.path, 0) > 0:
                state.fail[self.path] -= 1
                self.send_error(503, "busy")
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "no such file")
                return
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if m and not state.ignore_range:
                start = int(m[1])
                end = int(m[2]) if m[2] else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            if not state.ignore_range:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            if cut is not None:  # drop the connection part-way, as a flaky network would
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- test data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def archive_bytes() -> bytes:
    return make_zip(ihd_tree(4), prefix="iHarmony4/")


# ---------------------------------------------------------------------------------------------- HTTP fetch


def test_http_fetch_then_record_after_extract(server, tmp_path, archive_bytes):
    server.files["/dl/HFlickr.zip"] = archive_bytes
    lock = LockFile(tmp_path / "iharmony4.lock.json")
    path = fetch(f"{server.base}/dl/HFlickr.zip", tmp_path / "raw", lock, **FAST)
    assert path == tmp_path / "raw" / "HFlickr.zip"
    assert path.read_bytes() == archive_bytes
    assert not (tmp_path / "raw" / "HFlickr.zip.part").exists()
    assert not lock.path.exists()  # fetch checks against the lock but never records: extraction comes first
    safe_extract(path, tmp_path / "x")
    lock.record("HFlickr.zip", path, f"{server.base}/dl/HFlickr.zip")
    entry = json.loads(lock.path.read_text())["archives"]["HFlickr.zip"]
    assert entry["sha256"] == sha(archive_bytes)
    assert entry["size"] == len(archive_bytes)
    assert entry["source"] == f"{server.base}/dl/HFlickr.zip"


def test_interrupted_download_resumes_with_range(server, tmp_path, archive_bytes):
    cut = len(archive_bytes) // 3
    server.files["/a.zip"] = archive_bytes
    server.cut_after["/a.zip"] = cut
    path = fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert sha256_file(path) == sha(archive_bytes)
    assert [r["range"] for r in server.log] == [None, f"bytes={cut}-"]


def test_part_file_left_by_killed_run_is_resumed(server, tmp_path, archive_bytes):
    have = 1000
    (tmp_path / "a.zip.part").write_bytes(archive_bytes[:have])
    server.files["/a.zip"] = archive_bytes
    path = fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert path.read_bytes() == archive_bytes
    assert [r["range"] for r in server.log] == [f"bytes={have}-"]


def test_complete_part_file_is_accepted_on_416(server, tmp_path, archive_bytes):
    (tmp_path / "a.zip.part").write_bytes(archive_bytes)
    server.files["/a.zip"] = archive_bytes
    path = fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert path.read_bytes() == archive_bytes
    assert len(server.log) == 1


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, archive_bytes):
    server.ignore_range = True
    server.files["/a.zip"] = archive_bytes
    server.cut_after["/a.zip"] = 2000
    path = fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert sha256_file(path) == sha(archive_bytes)
    assert [r["range"] for r in server.log] == [None, "bytes=2000-"]  # asked, got a full 200 instead


def test_transient_errors_are_retried(server, tmp_path, archive_bytes):
    server.files["/a.zip"] = archive_bytes
    server.fail["/a.zip"] = 2
    path = fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert path.read_bytes() == archive_bytes
    assert len(server.log) == 3


def test_persistent_errors_give_up_with_clear_message(server, tmp_path):
    server.files["/a.zip"] = b"x"
    server.fail["/a.zip"] = 100
    with pytest.raises(DownloadError, match="giving up after 2 retries"):
        fetch(f"{server.base}/a.zip", tmp_path, LockFile(tmp_path / "lock.json"), **{**FAST, "retries": 2})
    assert len(server.log) == 3


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server.base}/missing.zip", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    assert len(server.log) == 1
    assert not (tmp_path / "missing.zip").exists()


def test_present_file_matching_lock_is_not_downloaded_again(server, tmp_path, archive_bytes):
    server.files["/a.zip"] = archive_bytes
    lock = LockFile(tmp_path / "lock.json")
    first = fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)
    second = fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)
    assert first == second
    assert len(server.log) == 1


def test_changed_archive_is_refused(server, tmp_path, archive_bytes):
    lock = LockFile(tmp_path / "lock.json")
    server.files["/a.zip"] = archive_bytes
    path = fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)
    lock.record("a.zip", path, f"{server.base}/a.zip")  # as ingest does once it has extracted
    path.unlink()
    server.files["/a.zip"] = archive_bytes[:-1] + b"!"  # same name, other bytes
    with pytest.raises(ChecksumMismatch) as e:
        fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)
    msg = str(e.value)
    assert "a.zip" in msg and sha(archive_bytes) in msg and sha(server.files["/a.zip"]) in msg
    assert "delete the 'a.zip' entry" in msg
    assert not path.exists()  # the mismatching download never took the final name
    lock.remove("a.zip")  # the documented way to accept a deliberate replacement
    (tmp_path / "a.zip.part").unlink()
    assert fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST).read_bytes() == server.files["/a.zip"]


def test_tampered_local_copy_is_refused(server, tmp_path, archive_bytes):
    lock = LockFile(tmp_path / "lock.json")
    server.files["/a.zip"] = archive_bytes
    path = fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)
    lock.record("a.zip", path, f"{server.base}/a.zip")
    path.write_bytes(b"corrupted")
    with pytest.raises(ChecksumMismatch, match="expected sha256"):
        fetch(f"{server.base}/a.zip", tmp_path, lock, **FAST)


def test_url_without_file_name_needs_name(server, tmp_path, archive_bytes):
    server.files["/download?id=42"] = archive_bytes
    with pytest.raises(ValueError, match="name="):
        fetch(f"{server.base}/download?id=42", tmp_path, LockFile(tmp_path / "lock.json"), **FAST)
    path = fetch(f"{server.base}/download?id=42", tmp_path, LockFile(tmp_path / "lock.json"), name="HCOCO.zip", **FAST)
    assert path.name == "HCOCO.zip" and path.read_bytes() == archive_bytes


# ---------------------------------------------------------------------------------------------- other sources


def test_local_path_and_file_uri(tmp_path, archive_bytes):
    src = tmp_path / "downloads" / "HFlickr.zip"
    src.parent.mkdir()
    src.write_bytes(archive_bytes)
    lock = LockFile(tmp_path / "lock.json")
    path = fetch(str(src), tmp_path / "raw", lock, progress=False)
    assert path == tmp_path / "raw" / "HFlickr.zip" and path.read_bytes() == archive_bytes
    assert lock.get("HFlickr.zip") is None
    lock.record("HFlickr.zip", path, str(src))
    assert lock.get("HFlickr.zip")["sha256"] == sha(archive_bytes)
    path.unlink()
    again = fetch(src.as_uri(), tmp_path / "raw", lock, progress=False)
    assert again.read_bytes() == archive_bytes
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        fetch(str(tmp_path / "nope.zip"), tmp_path / "raw", lock, progress=False)


def test_fsspec_memory_source(tmp_path, archive_bytes):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/HFlickr.tar.gz", archive_bytes)
    try:
        lock = LockFile(tmp_path / "lock.json")
        path = fetch("memory://bucket/HFlickr.tar.gz", tmp_path, lock, progress=False)
        assert path.read_bytes() == archive_bytes
        (tmp_path / "x.tar.gz.part").write_bytes(archive_bytes[:500])  # resume by seeking
        fs.pipe("/bucket/x.tar.gz", archive_bytes)
        assert fetch("memory://bucket/x.tar.gz", tmp_path, lock, progress=False).read_bytes() == archive_bytes
    finally:
        fs.rm("/bucket", recursive=True)


def test_object_storage_without_package_names_it(tmp_path):
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed; the missing-package message cannot be exercised")
    except ImportError:
        pass
    with pytest.raises(DownloadError, match="s3fs"):
        fetch("s3://bucket/HCOCO.zip", tmp_path, LockFile(tmp_path / "lock.json"), progress=False)


# ---------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar.bz2", "tar.xz"])
def test_extract_is_complete_and_idempotent(tmp_path, kind):
    files = ihd_tree(2)
    data = make_zip(files) if kind == "zip" else make_tar(files, "w:" + kind.split(".")[1])
    archive = tmp_path / f"HFlickr.{kind}"
    archive.write_bytes(data)
    target = tmp_path / "extracted" / archive_stem(archive)
    assert target.name == "HFlickr"
    assert safe_extract(archive, target) == target
    for name, content in files.items():
        assert (target / name).read_bytes() == content
    marker = json.loads((target / MARKER).read_text())
    assert marker["sha256"] == sha(data) and marker["files"] == len(files)
    (target / "HFlickr_train.txt").unlink()
    safe_extract(archive, target)  # same archive: skipped, so the deletion stays
    assert not (target / "HFlickr_train.txt").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["HFlickr"]  # no temp folders left


def test_new_archive_replaces_previous_tree(tmp_path):
    target = tmp_path / "out"
    a, b = tmp_path / "a.zip", tmp_path / "b.tar"
    a.write_bytes(make_zip({"old.txt": b"1"}))
    b.write_bytes(make_tar({"new.txt": b"2"}, "w"))
    safe_extract(a, target)
    safe_extract(b, target)
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.tar", "out"]


def test_foreign_target_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    (tmp_path / "a.zip").write_bytes(make_zip({"x": b"1"}))
    with pytest.raises(FileExistsError, match="not made by safe_extract"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def test_not_an_archive(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"plain text, not an archive" * 10)
    with pytest.raises(ValueError, match="not a zip or tar"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _member_offset(tar: bytes, index: int) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return tf.getmembers()[index].offset


def _corrupt_archives() -> dict[str, tuple[str, bytes, str]]:
    """case -> (file name, bytes, what the one-line error must say)."""
    files = ihd_tree(3, seed=5)
    tgz, plain = make_tar(files), make_tar(files, "w")
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:  # stored: a flipped byte reaches the CRC check
        for name, data in files.items():
            zf.writestr(name, data)
    z = stored.getvalue()
    member = files["HFlickr/composite_images/f1_1_2.jpg"]
    return {
        "zip-bad-crc": ("HFlickr.zip", _flip(z, z.index(member) + len(member) // 2), "Bad CRC-32"),
        "zip-truncated": ("HFlickr.zip", z[: len(z) // 2], "not a zip or tar"),
        "tgz-truncated": ("HFlickr.tar.gz", tgz[: len(tgz) * 2 // 3], "EOFError"),
        "tgz-flipped-byte": ("HFlickr.tar.gz", _flip(tgz, len(tgz) // 2), "corrupt or incomplete"),
        "tgz-flipped-crc": ("HFlickr.tar.gz", _flip(tgz, len(tgz) - 6), "CRC check failed"),
        # tarfile stops quietly at a bad header past the first: the members after it would be lost unnoticed
        "tar-damaged-header": ("HFlickr.tar", _flip(plain, _member_offset(plain, 2) + 10), "damaged member header"),
    }


CORRUPT = _corrupt_archives()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_archive_is_one_clear_error_and_leaves_nothing(tmp_path, case):
    name, data, expect = CORRUPT[case]
    archive = tmp_path / name
    archive.write_bytes(data)
    target = tmp_path / "out" / "HFlickr"
    safe_extract(_good_archive(tmp_path), target)  # a previous good tree must survive the failed extraction
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(CorruptArchive, match=re.escape(expect)) as e:
        safe_extract(archive, target)
    msg = str(e.value)
    assert "\n" not in msg and str(archive) in msg and "Delete" in msg and "nothing was extracted" in msg
    assert isinstance(e.value, ValueError) and e.value.archive == archive
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # no temp folder


def _good_archive(tmp_path: Path) -> Path:
    good = tmp_path / "good" / "HFlickr.zip"
    good.parent.mkdir(exist_ok=True)
    good.write_bytes(make_zip(ihd_tree(1)))
    return good


def test_a_corrupt_first_download_never_becomes_the_reference(server, tmp_path, archive_bytes):
    """The lock records an archive only once it has extracted: a damaged first download is not pinned."""
    lock = LockFile(tmp_path / "lock.json")
    url = f"{server.base}/HFlickr.tar.gz"
    good = make_tar(ihd_tree(2))
    server.files["/HFlickr.tar.gz"] = _flip(good, len(good) // 2)  # damaged in transit
    path = fetch(url, tmp_path / "dl", lock, **FAST)
    with pytest.raises(CorruptArchive):
        safe_extract(path, tmp_path / "x" / "HFlickr")
    assert lock.get("HFlickr.tar.gz") is None and not (tmp_path / "x" / "HFlickr").exists()
    path.unlink()
    server.files["/HFlickr.tar.gz"] = good  # the real thing, fetched again: accepted, then recorded
    path = fetch(url, tmp_path / "dl", lock, **FAST)
    safe_extract(path, tmp_path / "x" / "HFlickr")
    assert lock.record("HFlickr.tar.gz", path, url)["sha256"] == sha(good)


UNSAFE = UNSAFE_ARCHIVES


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_are_refused(tmp_path, case):
    kind, build, expect = UNSAFE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = work / f"evil.{kind}"
    archive.write_bytes(build())
    with pytest.raises(UnsafeArchive, match=re.escape(expect)) as e:
        safe_extract(archive, work / "out" / "ds")
    assert "refusing" in str(e.value)
    # nothing escaped and nothing half-done is left: only the archive and the (empty) parent folder remain
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "work",
        f"work/evil.{kind}",
        "work/out",
    ]
    assert not Path("/tmp/abs_evil.txt").exists()


def test_zip_bomb_size_and_count_limits(tmp_path):
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(make_zip({"zeros.bin": bytes(4 << 20), "small.txt": b"x"}))
    assert bomb.stat().st_size < 64 << 10  # 4 MiB of zeros packs to a few KiB
    with pytest.raises(UnsafeArchive, match="zeros.bin"):
        safe_extract(bomb, tmp_path / "out", max_total_bytes=1 << 20)
    many = tmp_path / "many.tar.gz"
    many.write_bytes(make_tar({f"f{i}.txt": b"x" for i in range(30)}))
    with pytest.raises(UnsafeArchive, match="max_files=10"):
        safe_extract(many, tmp_path / "out", max_files=10)
    big_tar = tmp_path / "big.tar.gz"
    big_tar.write_bytes(make_tar({"zeros.bin": bytes(2 << 20)}))
    with pytest.raises(UnsafeArchive, match="zeros.bin"):
        safe_extract(big_tar, tmp_path / "out", max_total_bytes=1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tar.gz", "bomb.zip", "many.tar.gz"]


# ---------------------------------------------------------------------------------------------- end to end


def test_download_extract_scan(server, tmp_path, archive_bytes):
    server.files["/share/iHarmony4.zip"] = archive_bytes
    server.cut_after["/share/iHarmony4.zip"] = 5000
    lock = LockFile(tmp_path / "data" / "iharmony4.lock.json")
    archive = fetch(f"{server.base}/share/iHarmony4.zip", tmp_path / "data" / "raw", lock, **FAST)
    target = safe_extract(archive, tmp_path / "data" / "extracted" / archive_stem(archive))
    assert lock.record(archive.name, archive, f"{server.base}/share/iHarmony4.zip")["sha256"] == sha(archive_bytes)
    root = find_root(target)
    assert root == target / "iHarmony4"
    issues = IssueLog("ingest")
    items = scan(root, issues)
    assert len(items) == 8 and len(issues) == 0
    assert all(it.real is not None and it.mask.exists() for it in items)
