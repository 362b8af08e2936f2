"""Decoding matrix: orientation, colour modes, bit depth, corrupt and truncated files; masks; resizing."""

import io
import os

import cv2
import numpy as np
import pytest

from dirl.data.images import (
    BadImage,
    decode_image,
    decode_mask,
    encode_jpeg,
    encode_png,
    resize_image,
    resize_mask,
    resize_pair,
)
from helpers.builders import corrupt_jpeg_data, with_exif_orientation
from helpers.paths import require_dir

RED, BLUE = (255, 0, 0), (0, 0, 255)


def halves(h=20, w=40) -> np.ndarray:
    """RGB image: left half red, right half blue."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = RED
    img[:, w // 2 :] = BLUE
    return img


def is_red(px) -> bool:
    return px[0] > 200 and px[1] < 60 and px[2] < 60


def is_blue(px) -> bool:
    return px[2] > 200 and px[0] < 60 and px[1] < 60


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of an array given in OpenCV channel order."""
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


# --- images -----------------------------------------------------------------------------------------------------


def test_plain_jpeg_is_rgb():
    img = decode_image(encode_jpeg(halves()))
    assert img.shape == (20, 40, 3) and img.dtype == np.uint8
    assert is_red(img[10, 5]) and is_blue(img[10, 35])


@pytest.mark.parametrize(
    "orientation, shape, red_at, blue_at",
    [
        (1, (20, 40), (10, 2), (10, 37)),  # as stored
        (3, (20, 40), (10, 37), (10, 2)),  # rotated 180: red ends up on the right
        (6, (40, 20), (2, 10), (37, 10)),  # rotate 90 CW to display: the stored left side becomes the top
        (8, (40, 20), (37, 10), (2, 10)),  # rotate 90 CCW: the stored left side becomes the bottom
    ],
)
def test_exif_orientation_is_applied(orientation, shape, red_at, blue_at):
    data = with_exif_orientation(encode_jpeg(halves()), orientation)
    img = decode_image(data)
    assert img.shape[:2] == shape
    assert is_red(img[red_at]) and is_blue(img[blue_at])


def test_grayscale_becomes_three_equal_channels():
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))  # (8, 25)
    img = decode_image(png(gray))
    assert img.shape == (8, 25, 3)
    assert np.array_equal(img[..., 0], gray) and np.array_equal(img[..., 1], gray) and np.array_equal(img[..., 2], gray)


def test_rgba_drops_alpha_and_keeps_colour():
    bgra = np.zeros((6, 6, 4), np.uint8)
    bgra[..., 0] = 200  # blue in OpenCV order
    bgra[..., 2] = 10
    bgra[:3, :, 3] = 0  # top half fully transparent
    bgra[3:, :, 3] = 255
    img = decode_image(png(bgra))
    assert img.shape == (6, 6, 3)
    assert np.all(img[..., 2] == 200) and np.all(img[..., 0] == 10)  # RGB; colour kept under transparency


def test_16bit_png_is_scaled_to_8bit():
    a = np.array([[0, 255, 256, 32768, 65535]], np.uint16)
    img = decode_image(png(a))
    assert img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [0, 0, 1, 128, 255]


def test_cmyk_jpeg_decodes_to_rgb():
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(halves()).convert("CMYK").save(buf, "JPEG", quality=95)
    img = decode_image(buf.getvalue())
    assert img.shape == (20, 40, 3)
    assert is_red(img[10, 3]) and is_blue(img[10, 36])


def test_jpeg_with_trailing_bytes_after_eoi_is_accepted():
    img = decode_image(encode_jpeg(halves()) + b"\x00" * 16 + b"junk")
    assert img.shape == (20, 40, 3)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda j, p: j[: len(j) // 2], "truncated JPEG"),
        (lambda j, p: j[:-2], "truncated JPEG"),  # only the EOI marker missing
        (lambda j, p: p[: len(p) // 2], "not a readable image"),  # truncated PNG
        (lambda j, p: p[:-12], "not a readable image"),  # PNG without IEND
        (lambda j, p: bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not a readable image"),
        (lambda j, p: b"name,value\n1,2\n", "not a readable image"),  # a text file
        (lambda j, p: b"", "empty"),
        (lambda j, p: j[:2] + bytes(len(j) - 2), "not a readable image"),  # JPEG header, zeroed body
    ],
)
def test_bad_data_raises_badimage(make, reason):
    rng = np.random.default_rng(1)
    jpeg = encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    pngb = png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(BadImage, match=reason):
        decode_image(make(jpeg, pngb), "x/sample.jpg")


def test_corrupt_jpeg_data_is_bad_and_silent(capfd):
    """libjpeg only warns about corrupt entropy data (OpenCV returns a damaged picture and prints the warning to
    stderr): the warning must make the image bad, with the decoder's words as the reason, and print nothing."""
    rng = np.random.default_rng(3)
    jpeg = encode_jpeg(cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 2))
    sos = jpeg.rfind(b"\xff\xda")
    cut_then_eoi = jpeg[: (sos + len(jpeg)) // 2] + b"\xff\xd9"  # a scan cut short, its end marker added back
    with pytest.raises(BadImage, match="corrupt JPEG data .*premature end of data segment"):
        decode_image(cut_then_eoi, "x/cut.jpg")
    with pytest.raises(BadImage, match="corrupt JPEG data .*Corrupt JPEG data"):
        decode_image(corrupt_jpeg_data(jpeg), "x/flipped.jpg")
    with pytest.raises(BadImage, match="not a readable image .*decoder: .*PNG"):
        decode_image(png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))[:300], "x/cut.png")
    assert decode_image(jpeg).shape == (48, 64, 3)  # the intact one still decodes
    out, err = capfd.readouterr()
    assert "Corrupt JPEG" not in err and "PNG" not in err and "libpng" not in err, err


def test_other_stderr_output_during_a_decode_is_passed_through(capfd):
    import threading

    from dirl.data import images

    jpeg = encode_jpeg(halves())
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            os.write(2, b"hello from another thread\n")
            stop.wait(0.001)

    t = threading.Thread(target=chatter)
    t.start()
    try:
        for _ in range(200):
            images._imdecode_quiet(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR_RGB)
    finally:
        stop.set()
        t.join()
    err = capfd.readouterr().err
    assert "hello from another thread" in err and all(ln == "hello from another thread" for ln in err.splitlines())


def test_bad_file_names_the_path(tmp_path):
    f = tmp_path / "broken.jpg"
    f.write_bytes(encode_jpeg(halves())[:100])
    with pytest.raises(BadImage) as e:
        decode_image(f)
    assert e.value.path == str(f) and str(f) in str(e.value) and "truncated" in e.value.reason
    with pytest.raises(BadImage, match="file not found"):
        decode_image(tmp_path / "missing.jpg")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(BadImage, match="cannot read"):
        decode_image(tmp_path)


# --- masks ------------------------------------------------------------------------------------------------------


def test_mask_0_255_and_0_1_read_the_same():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 1
    for stored in (m * 255, m):
        got, binary = decode_mask(png(stored))
        assert binary and got.dtype == np.uint8 and np.array_equal(got, m)


def test_non_binary_mask_is_binarised_at_127_and_flagged():
    m = np.array([[0, 3, 127, 128, 200, 255]], np.uint8)
    got, binary = decode_mask(png(m))
    assert not binary
    assert got.tolist() == [[0, 0, 0, 1, 1, 1]]


def test_colour_and_16bit_masks():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = 255
    got, binary = decode_mask(png(rgb))
    assert binary and got.sum() == 4
    m16 = np.zeros((4, 4), np.uint16)
    m16[0] = 65535
    got, binary = decode_mask(png(m16))
    assert binary and got[0].tolist() == [1, 1, 1, 1] and got[1:].sum() == 0


def test_corrupt_mask_raises():
    with pytest.raises(BadImage, match="masks/a.png"):
        decode_mask(b"\x89PNG\r\n\x1a\n garbage", "masks/a.png")


def test_encode_png_is_one_bit_and_round_trips():
    m = (np.random.default_rng(2).random((33, 47)) > 0.5).astype(np.uint8)
    data = encode_png(m)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 1  # IHDR bit depth
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), m * 255)
    assert np.array_equal(decode_mask(data)[0], m)
    assert encode_png(m.astype(bool)) == data == encode_png(m * 255)
    with pytest.raises(ValueError, match="binary"):
        encode_png(np.array([[0, 7]], np.uint8))


def test_encode_jpeg_round_trip_is_close():
    img = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8), (9, 9), 3)
    back = decode_image(encode_jpeg(img, quality=95))
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img).mean() < 3
    with pytest.raises(ValueError):
        encode_jpeg(img[..., 0])


# --- resizing ---------------------------------------------------------------------------------------------------


def test_resize_mask_interpolates_then_cuts_at_half():
    m = np.zeros((4, 4), np.uint8)
    m[:, :2] = 1
    up = resize_mask(m, 8)  # bilinear: column 3 gets 0.75, column 4 gets 0.25
    assert up.shape == (8, 8) and set(np.unique(up)) == {0, 1}
    assert np.all(up[:, :4] == 1) and np.all(up[:, 4:] == 0)
    m = np.zeros((8, 8), np.uint8)
    m[:, :3] = 1  # 3/4 of the left 4 columns -> left output pixel is 0.75 fg
    assert resize_mask(m, 2).tolist() == [[1, 0], [1, 0]]


def test_resize_pair_sizes_and_identity():
    img = np.random.default_rng(4).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    mask = np.zeros((30, 50), np.uint8)
    mask[5:20, 10:40] = 1
    x, m = resize_pair(img, mask, 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8 and m.shape == (16, 16) and m.dtype == np.uint8
    x, m = resize_pair(img, mask, (40, 25))
    assert x.shape == (40, 25, 3) and m.shape == (40, 25)
    assert resize_image(img, (30, 50)) is img


def test_big_shrink_is_antialiased():
    # a 1-pixel checkerboard shrunk 8x: area averaging gives flat grey, plain bilinear would alias
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    small = resize_image(np.dstack([board] * 3), 32)
    assert np.abs(small.astype(int) - 127.5).max() <= 1


# --- real data --------------------------------------------------------------------------------------------------


def test_real_photos_and_masks_decode(shared_data):
    root = require_dir(shared_data / "photos" / "coco128")
    for p in sorted((root / "images").glob("*.jpg"))[:5]:
        img = decode_image(p)
        mask, binary = decode_mask(root / "masks" / f"{p.stem}.png")
        assert img.ndim == 3 and img.shape[:2] == mask.shape and binary
        assert 0 < mask.mean() < 1
