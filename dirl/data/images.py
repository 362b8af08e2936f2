"""Robust image and mask decoding, encoding and resizing (OpenCV).

Conventions used across the project:
- an image is an ``(H, W, 3)`` uint8 array in RGB order;
- a mask is an ``(H, W)`` uint8 array with values {0, 1} (1 = inharmonious foreground);
  on disk and in the shards a mask is a PNG with values {0, 255}.

``decode_image`` accepts whatever a dataset throws at it and either returns an upright RGB image or raises
:class:`BadImage` naming the file and the reason:
- JPEG EXIF orientation is applied (OpenCV does this for ``IMREAD_COLOR``);
- grayscale is replicated to three channels; CMYK JPEG is converted to RGB by OpenCV;
- an alpha channel is dropped, not composited (the colour under a transparent pixel is kept as is);
- 16-bit images are scaled to 8 bits (value >> 8, what OpenCV does for ``IMREAD_COLOR``);
- empty, corrupt, truncated (a JPEG without its end-of-image marker) or non-image data is rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import cv2
import numpy as np

Source = Union[bytes, bytearray, memoryview, np.ndarray, str, Path]


class BadImage(ValueError):
    """An image or mask that cannot be used: ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_source(src: Source, name: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Return ``(uint8 buffer, display name)`` for raw bytes or a file path."""
    if isinstance(src, (str, Path)):
        path = Path(src)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadImage(path, "file not found") from None
        except OSError as e:
            raise BadImage(path, f"cannot read file ({e.strerror or e})") from None
        return np.frombuffer(data, np.uint8), str(name or path)
    return np.frombuffer(src, np.uint8), str(name) if name is not None else "<bytes>"


def _is_jpeg(buf: np.ndarray) -> bool:
    return buf.size >= 3 and buf[0] == 0xFF and buf[1] == 0xD8 and buf[2] == 0xFF


def _jpeg_truncated(buf: np.ndarray) -> bool:
    """True when the last end-of-image marker (FF D9) does not follow the last start-of-scan (FF DA).

    Inside entropy-coded data a 0xFF byte is always stuffed (FF 00), so FF D9 / FF DA are real markers; an EXIF
    thumbnail's EOI comes before the main image's scans and does not fool this test. Trailing junk after EOI
    (some cameras append data) is accepted.
    """
    data = buf.tobytes()
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _decode(src: Source, name: str | Path | None, flags: int) -> tuple[np.ndarray, str]:
    buf, label = read_source(src, name)
    if buf.size == 0:
        raise BadImage(label, "empty file")
    if _is_jpeg(buf) and _jpeg_truncated(buf):
        raise BadImage(label, "truncated JPEG (no end-of-image marker after the last scan)")
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise BadImage(label, f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise BadImage(label, "not a readable image (corrupt, truncated or unsupported format)")
    if img.size == 0:
        raise BadImage(label, f"image has no pixels (shape {img.shape})")
    return img, label


def decode_image(src: Source, name: str | Path | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to an upright ``(H, W, 3)`` uint8 RGB image; raise :class:`BadImage`."""
    img, _ = _decode(src, name, cv2.IMREAD_COLOR_RGB)  # EXIF-rotated, 3 channels, 8 bits
    return img


def decode_mask(src: Source, name: str | Path | None = None) -> tuple[np.ndarray, bool]:
    """Decode a mask to ``(H, W)`` uint8 {0, 1}; returns ``(mask, was_binary)``.

    Colour masks are converted to gray. A mask whose maximum is <= 1 is read as 0/1 (1 = foreground); otherwise
    a pixel above half of full scale (> 127, or > 32767 for a 16-bit mask) is foreground. ``was_binary`` is
    False when the file held other values than {0, 1} or {0, full scale} (e.g. a JPEG-compressed or
    anti-aliased mask): it was binarised, and the caller should note it.
    """
    m, _ = _decode(src, name, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    top = int(m.max())
    if top <= 1:
        return m.astype(np.uint8), True
    full = 65535 if m.dtype == np.uint16 and top > 255 else 255
    binary = not np.any((m != 0) & (m != full))
    return (m > full // 2).astype(np.uint8), binary


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB image as baseline JPEG bytes (4:2:0 chroma, OpenCV defaults)."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"encode_jpeg expects (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV failed to encode the image as JPEG")
    return buf.tobytes()


def encode_png(mask: np.ndarray) -> bytes:
    """Encode a binary ``(H, W)`` mask ({0, 1}, bool or {0, 255}) as a 1-bit grayscale PNG.

    Any PNG reader returns it as 0/255 gray (PIL: mode "1"); 1-bit PNGs are ~3x smaller and decode ~4x faster
    than 8-bit ones.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode_png expects an (H, W) mask, got shape {mask.shape}")
    m = np.asarray(mask)
    if m.dtype == bool or m.max(initial=0) <= 1:
        m = m.astype(np.uint8) * 255
    elif np.any((m != 0) & (m != 255)):
        raise ValueError("encode_png expects a binary mask ({0, 1} or {0, 255}); binarise it first")
    params = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(".png", m.astype(np.uint8, copy=False), params)
    if not ok:
        raise ValueError("OpenCV failed to encode the mask as PNG")
    return buf.tobytes()


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


AREA_BELOW = 0.8  # a resize that shrinks a side below this factor (and enlarges none) uses INTER_AREA


def _interp(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """Bilinear, or INTER_AREA (anti-aliased, like the PIL bilinear filter the reference uses) when shrinking
    a side by more than 1.25x. Mild shrinks (a 256 -> 224 train crop) stay bilinear: nearly identical, 3x faster."""
    fy, fx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return cv2.INTER_AREA if max(fy, fx) <= 1.0 and min(fy, fx) < AREA_BELOW else cv2.INTER_LINEAR


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` (int = square, or ``(h, w)``); filter: see ``_interp``."""
    h, w = _hw(size)
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=_interp(img.shape[:2], (h, w)))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a {0, 1} mask the reference way: interpolate the 0/255 mask, then binarise at 0.5 (> 127)."""
    h, w = _hw(size)
    if mask.shape[:2] == (h, w):
        return mask
    m = cv2.resize(mask * np.uint8(255), (w, h), interpolation=_interp(mask.shape[:2], (h, w)))
    return (m > 127).astype(np.uint8)


def resize_pair(img: np.ndarray, mask: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image and its mask to the same ``size`` (same filter for both; the mask is then cut at 0.5)."""
    return resize_image(img, size), resize_mask(mask, size)
