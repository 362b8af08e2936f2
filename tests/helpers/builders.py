"""Builders of test inputs several modules need: image bytes (noise JPEG, PNG mask, EXIF orientation, corrupt JPEG
data, a decompression-bomb PNG), an iHarmony4-like file tree, zip/tar archives and the unsafe-archive cases."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- archives and trees


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
        "tar-symlink": ("tar.gz", lambda: tar_with(tar_link("link", tarfile.SYMTYPE, "/etc/passwd")), "symbolic link"),
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


# ---------------------------------------------------------------------------------------------- image bytes


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
            data = jpeg[:off] + bytes([jpeg[off] ^ bit]) + jpeg[off + 1 :]
            if b"\xff" in data[off - 1 : off + 2]:
                continue
            try:
                decode_image(data)
            except BadImage as e:
                if "corrupt JPEG data" in str(e):
                    return data
    raise AssertionError("no single-byte change of this JPEG makes libjpeg warn")


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose IHDR declares w x h RGB pixels (a decompression bomb's header; its IDAT holds 2 rows)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\0" * (2 * (3 * w + 1)), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- process


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ihd_archive_tree(photos_per_subset: int = 8, seed: int = 0) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """A small iHarmony4 archive's files (relative path -> bytes) in the official layout, and its le50-style lists.

    Four subsets (HCOCO, HAdobe5k, HFlickr, Hday2night), each photo with ``real_images/``, one mask and two
    composites (the background kept, the foreground shifted), photos of 4:3 or 3:4 aspect. The first HAdobe5k photo
    is 4000 x 3000 px, as HAdobe5k's are, and listed for test. Lists: about a quarter of the photos for test, most
    of the rest for train, one photo per subset in no list (its composites must be left out, named), and one
    malformed line in the train list. Returns ``(files, {"train": lines, "test": lines})``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    lists: dict[str, list[str]] = {"train": ["# le50-style list", "not a composite line"], "test": []}
    for sub, letter in (("HCOCO", "c"), ("HAdobe5k", "a"), ("HFlickr", "f"), ("Hday2night", "d")):
        for i in range(photos_per_subset):
            big = sub == "HAdobe5k" and i == 0
            h, w = (3000, 4000) if big else ((72, 96) if i % 2 else (96, 72))
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([(xx * 255 // w), (yy * 255 // h), np.full((h, w), 40 + 20 * (i % 5))], -1)
            real = np.clip(base + rng.integers(-12, 13, (1, 1, 3)), 0, 255).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            top, left = h // 4 + int(rng.integers(0, h // 8)), w // 4 + int(rng.integers(0, w // 8))
            mask[top : top + h // 3, left : left + w // 3] = 255
            name = f"{letter}{i:03d}"
            files[f"{sub}/real_images/{name}.jpg"] = _encode(real, ".jpg")
            files[f"{sub}/masks/{name}_1.png"] = _encode(mask, ".png")
            split = "test" if big or i % 4 == 1 else None if i == photos_per_subset - 1 else "train"
            for k in (1, 2):
                shift = rng.integers(-60, 61, 3)
                comp = real.astype(np.int16)
                comp[mask > 0] += shift.astype(np.int16)
                fname = f"{name}_1_{k}.jpg"
                files[f"{sub}/composite_images/{fname}"] = _encode(np.clip(comp, 0, 255).astype(np.uint8), ".jpg")
                if split:
                    lists[split].append(f"{sub}/composite_images/{fname}")
    return files, lists


def _encode(img, ext: str) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img[..., ::-1] if img.ndim == 3 else img)
    assert ok
    return buf.tobytes()
