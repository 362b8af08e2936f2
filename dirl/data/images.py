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
- empty, corrupt, truncated (a JPEG without its end-of-image marker) or non-image data is rejected, and so is
  a JPEG whose decoder warns about corrupt data (libjpeg's "Corrupt JPEG data: premature end of data segment",
  "... extraneous bytes before marker", "bad Huffman code", "Premature end of JPEG file"): OpenCV would
  return a half-grey picture and print the warning to stderr; here the decoder's messages are caught (fd 2
  is pointed at a private file while it runs) and the image is refused with the message as its reason;
- an image declaring more than the pixel cap (``pixel_cap``: 40 MP, ``DIRL_MAX_PIXELS``) is refused from its
  header (``declared_size``) before anything is decoded, so a decompression bomb costs no memory.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

Source = bytes | bytearray | memoryview | np.ndarray | str | Path


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


MAX_PIXELS = 40_000_000  # default pixel cap (width x height); DIRL_MAX_PIXELS overrides it, 0 = no cap
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def pixel_cap() -> int:
    """The pixel cap: ``$DIRL_MAX_PIXELS`` (e.g. ``40000000`` or ``4e7``; 0 = no cap), else ``MAX_PIXELS``."""
    raw = os.environ.get("DIRL_MAX_PIXELS", "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        return int(float(raw))
    except ValueError:
        raise ValueError(f"DIRL_MAX_PIXELS = {raw!r} must be a number of pixels (0 = no cap)") from None


def declared_size(buf) -> tuple[int, int] | None:
    """``(height, width)`` that an encoded image declares in its header, read without decoding anything.

    Reads the PNG IHDR, the JPEG SOF marker (walking the segments before it, so an EXIF thumbnail is skipped),
    and the GIF, BMP, WebP and TIFF headers; returns None for another format or a header cut short.
    """
    b = memoryview(buf).cast("B")
    n = len(b)

    def u(off: int, size: int, order: str = "big") -> int:
        if off + size > n:
            raise IndexError(off)
        return int.from_bytes(b[off : off + size], "little" if order == "little" else "big")

    try:
        if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
            return u(20, 4), u(16, 4)
        if b[:2] == b"\xff\xd8":
            i = 2
            while i + 4 <= n and b[i] == 0xFF:
                m = b[i + 1]
                if m == 0xFF:  # fill byte
                    i += 1
                elif m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:  # markers without a length
                    i += 2
                elif m in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
                    return None
                elif m in _JPEG_SOF:
                    return u(i + 5, 2), u(i + 7, 2)
                else:
                    i += 2 + u(i + 2, 2)
            return None
        if b[:6] in (b"GIF87a", b"GIF89a"):
            return u(8, 2, "little"), u(6, 2, "little")
        if b[:2] == b"BM":
            if u(14, 4, "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
                return u(20, 2, "little"), u(18, 2, "little")
            u(22, 4)  # the header is long enough
            w, h = (int.from_bytes(b[o : o + 4], "little", signed=True) for o in (18, 22))
            return abs(h), abs(w)  # a negative height = top-down rows
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            chunk = bytes(b[12:16])
            if chunk == b"VP8X":
                return 1 + u(27, 3, "little"), 1 + u(24, 3, "little")
            if chunk == b"VP8L":
                bits = u(21, 4, "little")
                return 1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF)
            if chunk == b"VP8 ":
                return u(28, 2, "little") & 0x3FFF, u(26, 2, "little") & 0x3FFF
            return None
        if b[:4] in (b"II*\x00", b"MM\x00*"):
            order = "little" if b[0] == 0x49 else "big"
            ifd, found = u(4, 4, order), {}
            for k in range(u(ifd, 2, order)):
                e = ifd + 2 + 12 * k
                tag = u(e, 2, order)
                if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG
                    found[tag] = u(e + 8, 2 if u(e + 2, 2, order) == 3 else 4, order)
            return (found[257], found[256]) if len(found) == 2 else None
    except IndexError:
        return None
    return None


def _refuse_above_cap(label: str, h: int, w: int, cap: int, how: str) -> None:
    if cap > 0 and h * w > cap:
        raise BadImage(
            label,
            f"{how} {w}x{h} pixels ({h * w / 1e6:.3g} MP), above the pixel cap of {cap / 1e6:g} MP: "
            f"refused (a decompression bomb or a huge scan; raise the cap with DIRL_MAX_PIXELS or "
            f"`dirl predict --max-pixels`)",
        )


# libjpeg warnings that mean the pixels are wrong (the decoder filled in grey or skipped data). Not every warning
# does: "Corrupt JPEG data: bad ICC marker" concerns only the colour profile, and is let through.
_CORRUPT_JPEG = re.compile(
    r"Corrupt JPEG data(?!: bad ICC marker)|Premature end of JPEG file|Invalid SOS parameters|"
    r"Inconsistent progression sequence|Bogus (Huffman|DQT|DHT)|Huffman table"
)
_DECODER_TEXT = re.compile(r"JPEG|libjpeg|libpng|grfmt_|imdecode|PNG|IDAT|IHDR|CRC|zlib", re.IGNORECASE)
_capture_lock = threading.Lock()
_capture: tuple[int, object] | None = None  # (pid, temp file) that fd 2 points at while a decoder runs


def _capture_file():
    """This process's private temp file for decoder messages (a forked child makes its own)."""
    global _capture
    if _capture is None or _capture[0] != os.getpid():
        _capture = (os.getpid(), tempfile.TemporaryFile(prefix="dirl-decode-", buffering=0))
    return _capture[1]


def _imdecode_quiet(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` with whatever the decoders print to stderr (fd 2) caught: ``(image or None, lines)``.

    libjpeg and libpng write warnings straight to fd 2, out of reach of OpenCV's log level; fd 2 is pointed at a
    private file for the call (a lock keeps threads from interleaving). Caught lines that are not a decoder's
    (another thread's output) are written back to stderr.
    """
    with _capture_lock:
        try:
            cap = _capture_file()
            saved = os.dup(2)
        except OSError:  # no fd 2 (a daemon) or no temp dir: decode without catching
            return cv2.imdecode(buf, flags), []
        try:
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError, OSError):
                pass
            os.dup2(cap.fileno(), 2)
            try:
                img = cv2.imdecode(buf, flags)
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        fd = cap.fileno()
        size = os.fstat(fd).st_size
        if not size:
            return img, []
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, size).decode("utf-8", "replace")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ours = [ln for ln in lines if _DECODER_TEXT.search(ln)]
    others = [ln for ln in lines if not _DECODER_TEXT.search(ln)]
    if others:
        print("\n".join(others), file=sys.stderr)
    return img, ours


def _decoder_said(lines: list[str]) -> str:
    """The decoder's messages, shortened for a reason string (OpenCV's ``[ WARN:0@...] file:line`` prefix cut)."""
    short = [re.sub(r"^\[\s*WARN:[^\]]*\]\s*(global\s+)?\S+:\d+\s+(\S+\s+)?", "", ln) for ln in lines]
    return "; ".join(dict.fromkeys(short))


def _decode(src: Source, name: str | Path | None, flags: int, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    buf, label = read_source(src, name)
    if buf.size == 0:
        raise BadImage(label, "empty file")
    cap = pixel_cap() if max_pixels is None else int(max_pixels)
    hw = declared_size(buf)
    if hw is not None:  # before decoding: the header's size is what the decoder would allocate
        _refuse_above_cap(label, hw[0], hw[1], cap, "declares")
    if _is_jpeg(buf) and _jpeg_truncated(buf):
        raise BadImage(label, "truncated JPEG (no end-of-image marker after the last scan)")
    try:
        img, said = _imdecode_quiet(buf, flags)
    except cv2.error as e:
        raise BadImage(label, f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        why = f"; decoder: {_decoder_said(said)}" if said else ""
        raise BadImage(label, f"not a readable image (corrupt, truncated or unsupported format{why})")
    corrupt = [ln for ln in said if _CORRUPT_JPEG.search(ln)]
    if corrupt:
        raise BadImage(label, f"corrupt JPEG data (the decoder said: {_decoder_said(corrupt)})")
    if img.size == 0:
        raise BadImage(label, f"image has no pixels (shape {img.shape})")
    _refuse_above_cap(label, img.shape[0], img.shape[1], cap, "decodes to")  # a format declared_size cannot read
    return img, label


def decode_image(src: Source, name: str | Path | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to an upright ``(H, W, 3)`` uint8 RGB image; raise :class:`BadImage`.

    ``max_pixels``: refuse a larger image (default :func:`pixel_cap`; 0 = no cap)."""
    img, _ = _decode(src, name, cv2.IMREAD_COLOR_RGB, max_pixels)  # EXIF-rotated, 3 channels, 8 bits
    return img


def decode_mask(src: Source, name: str | Path | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, bool]:
    """Decode a mask to ``(H, W)`` uint8 {0, 1}; returns ``(mask, was_binary)``.

    Colour masks are converted to gray. A mask whose maximum is <= 1 is read as 0/1 (1 = foreground); otherwise
    a pixel above half of full scale (> 127, or > 32767 for a 16-bit mask) is foreground. ``was_binary`` is
    False when the file held other values than {0, 1} or {0, full scale} (e.g. a JPEG-compressed or
    anti-aliased mask): it was binarised, and the caller should note it.
    """
    m, _ = _decode(src, name, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH, max_pixels)
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


INTERPOLATIONS = ("auto", "bilinear")


def _interp(src_hw: tuple[int, int], dst_hw: tuple[int, int], interpolation: str = "auto") -> int:
    """``auto``: bilinear, or INTER_AREA (anti-aliased) when shrinking a side by more than 1.25x; mild shrinks (a
    256 -> 224 train crop) stay bilinear: nearly identical, 3x faster. ``bilinear``: always plain bilinear, the
    reference's test resize (``evaluate.interpolation``)."""
    if interpolation == "bilinear":
        return cv2.INTER_LINEAR
    if interpolation != "auto":
        raise ValueError(f"interpolation {interpolation!r}: expected one of {INTERPOLATIONS}")
    fy, fx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return cv2.INTER_AREA if max(fy, fx) <= 1.0 and min(fy, fx) < AREA_BELOW else cv2.INTER_LINEAR


def shortest_side_hw(h: int, w: int, side: int) -> tuple[int, int]:
    """``(h, w)`` scaled so that the shortest side is ``side`` (never enlarged), aspect kept: 4000x3000, 256 ->
    (341, 256)."""
    scale = min(1.0, side / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(img: np.ndarray, size: int | tuple[int, int], interpolation: str = "auto") -> np.ndarray:
    """Resize an RGB image to ``size`` (int = square, or ``(h, w)``); filter: see ``_interp``."""
    h, w = _hw(size)
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=_interp(img.shape[:2], (h, w), interpolation))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int], interpolation: str = "auto") -> np.ndarray:
    """Resize a {0, 1} mask the reference way: interpolate the 0/255 mask, then binarise at 0.5 (> 127)."""
    h, w = _hw(size)
    if mask.shape[:2] == (h, w):
        return mask
    m = cv2.resize(mask * np.uint8(255), (w, h), interpolation=_interp(mask.shape[:2], (h, w), interpolation))
    return (m > 127).astype(np.uint8)


def resize_pair(img: np.ndarray, mask: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image and its mask to the same ``size`` (same filter for both; the mask is then cut at 0.5)."""
    return resize_image(img, size), resize_mask(mask, size)
