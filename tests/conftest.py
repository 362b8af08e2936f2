"""Shared fixtures: the real params.yaml shrunk to a seconds-long CPU run, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or $DIRL_SHARED_DATA); None when absent."""
    env = os.environ.get("DIRL_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data (or $DIRL_SHARED_DATA) is absent in this checkout")
    return path


@pytest.fixture
def params_path() -> Path:
    return ROOT / "params.yaml"


@pytest.fixture
def tiny_cfg(params_path, tmp_path):
    """The real params.yaml, shrunk to a seconds-long CPU run writing under tmp_path."""
    from dirl.config import load_config

    return load_config(
        params_path,
        overrides={
            "model.name": "dirl_lite",
            "model.input_size": 64,
            "data.stored_size": 64,
            "data.workers": 1,
            "synth.per_image": 1,
            "train.epochs": 2,
            "train.batch_size": 4,
            "train.max_steps_per_epoch": 3,
            "train.storage_path": str(tmp_path / "ray_results"),
            "tune.num_samples": 2,
            "tune.epochs": 1,
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        },
    )


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray with 2 CPUs for the tests of one module."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- hostile-input tally


HOSTILE = pytest.StashKey[dict]()


@pytest.fixture
def hostile_tally(pytestconfig) -> dict:
    """Counts that tests/test_hostile.py adds to; ``pytest_terminal_summary`` prints them as one line."""
    return pytestconfig.stash.setdefault(HOSTILE, {"tried": 0, "reported": 0, "good": 0, "kept": 0, "lost": 0})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    t = config.stash.get(HOSTILE, None)
    if t:
        terminalreporter.write_line(f"hostile inputs: tried {t['tried']} / reported by name {t['reported']} / "
                                    f"good items kept {t['kept']} of {t['good']} / lost {t['lost']}")


# ---------------------------------------------------------------------------------------------- shared test data
# Plain helpers (not fixtures) used by several test modules: `from conftest import make_zip, ...`.


def jpeg_bytes(rng, h: int = 24, w: int = 32) -> bytes:
    """A random-noise JPEG of h x w."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def png_mask_bytes(h: int = 24, w: int = 32) -> bytes:
    """A 0/255 PNG mask of h x w with a rectangle of foreground."""
    import cv2
    import numpy as np

    mask = np.zeros((h, w), np.uint8)
    mask[4:12, 6:20] = 255
    ok, buf = cv2.imencode(".png", mask)
    assert ok
    return buf.tobytes()


def ihd_tree(n_photos: int = 3, seed: int = 0) -> dict[str, bytes]:
    """A tiny iHarmony4-like tree: relative path -> file bytes (HFlickr, 2 composites per photo)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    files = {}
    for i in range(n_photos):
        files[f"HFlickr/real_images/f{i}.jpg"] = jpeg_bytes(rng)
        files[f"HFlickr/masks/f{i}_1.png"] = png_mask_bytes()
        for k in (1, 2):
            files[f"HFlickr/composite_images/f{i}_1_{k}.jpg"] = jpeg_bytes(rng)
    files["HFlickr_train.txt"] = b"".join(f"f{i}_1_1.jpg\n".encode() for i in range(n_photos))
    return files


def make_zip(files: dict[str, bytes], prefix: str = "") -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def make_tar(files: dict[str, bytes], mode: str = "w:gz", prefix: str = "") -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_with(info, data: bytes = b"payload") -> bytes:
    """A zip holding ``ok/fine.txt`` and the member ``info`` (a ZipInfo) with ``data``."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/fine.txt", b"fine")
        zf.writestr(info, data)
    return buf.getvalue()


def tar_with(info, data: bytes = b"payload") -> bytes:
    """A .tar.gz holding ``ok/fine.txt`` and the member ``info`` (a TarInfo; ``data`` when it is a file)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("ok/fine.txt")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        if info.isfile():
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        else:
            tf.addfile(info)
    return buf.getvalue()


def symlink_zipinfo(name: str):
    import stat
    import zipfile

    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def tar_link(name: str, kind: bytes, target: str):
    """A TarInfo of type ``kind`` (SYMTYPE, LNKTYPE, CHRTYPE, FIFOTYPE, ...) pointing at ``target``."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _unsafe_archives() -> dict:
    import stat
    import tarfile
    import zipfile

    return {  # case -> (archive kind, builder, text the refusal must contain)
        "zip-dotdot": ("zip", lambda: zip_with(zipfile.ZipInfo("../evil.txt")), "../evil.txt"),
        "zip-nested-dotdot": ("zip", lambda: zip_with(zipfile.ZipInfo("a/../../evil.txt")), "escape"),
        "zip-absolute": ("zip", lambda: zip_with(zipfile.ZipInfo("/tmp/abs_evil.txt")), "absolute"),
        "zip-symlink": ("zip", lambda: zip_with(symlink_zipinfo("link"), b"/etc/passwd"), "symbolic link"),
        "tar-dotdot": ("tar.gz", lambda: tar_with(tarfile.TarInfo("../evil.txt")), "../evil.txt"),
        "tar-absolute": ("tar.gz", lambda: tar_with(tarfile.TarInfo("/tmp/abs_evil.txt")), "absolute"),
        "tar-symlink": ("tar.gz", lambda: tar_with(tar_link("link", tarfile.SYMTYPE, "/etc/passwd")),
                        "symbolic link"),
        "tar-hardlink": ("tar.gz", lambda: tar_with(tar_link("hl", tarfile.LNKTYPE, "ok/fine.txt")), "hard link"),
        "tar-device": ("tar.gz", lambda: tar_with(tar_link("dev", tarfile.CHRTYPE, "")), "device"),
        "tar-fifo": ("tar.gz", lambda: tar_with(tar_link("pipe", tarfile.FIFOTYPE, "")), "FIFO"),
        "zip-fifo": ("zip", lambda: zip_with(_special_zipinfo("pipe", stat.S_IFIFO)), "special file"),
    }


def _special_zipinfo(name: str, kind: int):
    import zipfile

    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (kind | 0o644) << 16
    return info


UNSAFE_ARCHIVES = _unsafe_archives()


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112) right after SOI."""
    import struct

    tiff = b"II*\x00" + struct.pack("<I", 8)  # little-endian TIFF header, IFD0 at offset 8
    tiff += struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def corrupt_jpeg_data(jpeg: bytes) -> bytes:
    """``jpeg`` with one byte of its entropy-coded data changed so that libjpeg warns "Corrupt JPEG data" (OpenCV
    alone would return a damaged picture). Deterministic: the first such byte from the middle of the scan on."""
    from dirl.data.images import BadImage, decode_image

    sos = jpeg.rfind(b"\xff\xda")
    for off in range((sos + len(jpeg)) // 2, len(jpeg) - 2):
        if jpeg[off] == 0xFF or jpeg[off - 1] == 0xFF:
            continue
        for bit in (0x10, 0x01, 0x80):
            data = jpeg[:off] + bytes([jpeg[off] ^ bit]) + jpeg[off + 1:]
            if b"\xff" in data[off - 1:off + 2]:
                continue
            try:
                decode_image(data)
            except BadImage as e:
                if "corrupt JPEG data" in str(e):
                    return data
    raise AssertionError("no single-byte change of this JPEG makes libjpeg warn")
