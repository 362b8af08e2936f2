"""Predict inharmonious-region maps for image files of any size.

    summary = predict_paths(cfg, ["photos/", "a.jpg"], model_ref="models:/dirl@champion", out_dir="pred")

For every readable image ``<stem>.<ext>`` (folders are searched recursively for image files) it writes, at
the image's own size:
- ``<stem>_mask.png``: the probability map as 8-bit gray (0..255 = probability 0..1; threshold at 128 for a
  binary mask, or pass ``threshold`` to write a 0/255 mask instead);
- ``<stem>_overlay.png``: the image tinted red by the probability, with the 0.5 contour in yellow.
Two inputs with the same stem get ``<stem>-1``, ``<stem>-2`` ... Unreadable inputs (missing, corrupt,
truncated, not an image, or above the pixel cap: ``max_pixels``, default ``dirl.data.images.pixel_cap()``, checked
from the file's header before decoding) are reported with the reason and skipped; ``summary.json`` lists them.
Outputs appear only complete: both files of an image are encoded first, then written to temporary files and
renamed, so an interrupted or failed write leaves no partial file.

Pre- and post-processing (:func:`predict_maps`) is shared with the MLflow pyfunc model: every image is resized
to the model's square input size (so images of any size batch together), ImageNet-normalised, predicted, and
the final map is resized back bilinearly to the image's size.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dirl.config import Config
from dirl.data.images import BadImage, decode_image
from dirl.data.transforms import map_to_image, model_input
from dirl.io import write_json_atomic
from dirl.lifecycle.resolve import load_model_ref
from dirl.progress import bar as progress_bar
from dirl.speed import default_device

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@torch.inference_mode()
def predict_maps(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    input_size: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> list[np.ndarray]:
    """RGB uint8 images ``(h_i, w_i, 3)`` of any sizes -> probability maps ``(h_i, w_i)`` float32 in [0, 1].

    Each image is resized to ``input_size`` x ``input_size``, normalised, and batched ``batch_size`` at a time;
    the model's final map (its first output) is resized back to the image's size.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.stack([model_input(img, input_size) for img in chunk])  # (B, 3, S, S)
        probs = model(torch.from_numpy(x).to(device))[0]  # (B, 1, S, S)
        probs = probs.float().clamp_(0, 1)[:, 0].cpu().numpy()  # (B, S, S)
        out += [map_to_image(p, img.shape) for img, p in zip(chunk, probs)]  # (h_i, w_i)
    return out


def to_png8(prob: np.ndarray) -> np.ndarray:
    """Probability map (h, w) in [0, 1] -> uint8 (h, w), 255 = probability 1."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def overlay(img: np.ndarray, prob: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB image tinted red by ``prob``, with the 0.5 contour drawn in yellow; (h, w, 3) uint8 RGB."""
    a = (alpha * prob)[..., None]  # (h, w, 1)
    red = np.array([255, 0, 0], np.float32)
    out = (img.astype(np.float32) * (1 - a) + red * a).astype(np.uint8)
    binary = (prob > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(img.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thickness)
    return out


def quiet_downloads(stream=None) -> bool:
    """Off a terminal (a log file, a pipe), turn MLflow's artifact download bar off: it would write one
    carriage-return update per chunk and file into the log. MLflow reads ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``
    each time it opens a bar; a value the user set is kept. Returns whether the bar is off."""
    stream = stream or sys.__stderr__ or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true").lower() in ("false", "0")


def find_images(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """Expand files and folders into image paths; missing inputs come back as problems {file, reason}."""
    paths: list[Path] = []
    problems: list[dict] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                problems.append({"file": str(p), "reason": f"folder holds no image files ({', '.join(IMAGE_EXTS)})"})
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            problems.append({"file": str(p), "reason": "no such file or folder"})
    return paths, problems


def _encode_png(path: Path, img: np.ndarray) -> bytes:
    """PNG bytes of ``img`` (RGB arrays are converted to OpenCV's BGR)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: OpenCV failed to encode the PNG")
    return buf.tobytes()


def _write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary name, then rename them all: no partial file is ever left behind."""
    tmps = {path: path.with_name(f".{path.name}.tmp") for path in files}
    try:
        for path, data in files.items():
            tmps[path].write_bytes(data)
        for path in files:
            os.replace(tmps[path], path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _write_png(path: Path, img: np.ndarray) -> None:
    """Write a PNG atomically (temp file + rename); RGB arrays are converted to OpenCV's BGR."""
    _write_files({path: _encode_png(path, img)})


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n}")
    return stems


def predict_paths(
    cfg: Config,
    inputs: Sequence[str | os.PathLike],
    model_ref: str,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    threshold: float | None = None,
    max_pixels: int | None = None,
) -> dict:
    """Predict a map for every image in ``inputs`` (files or folders) and write masks and overlays.

    ``max_pixels``: refuse images declaring more pixels (default ``dirl.data.images.pixel_cap()``: 40 MP or
    ``$DIRL_MAX_PIXELS``; 0 = no cap). Returns ``{"model", "inputs", "tried", "written", "failed": [{"file",
    "reason"}], "out_dir", "seconds", "images_per_s"}`` (``inputs``: image files found; ``tried``: those plus
    the inputs that were not found or held no image) and writes it to ``<out_dir>/summary.json``.
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = no cap), got {max_pixels}")
    quiet_downloads()
    paths, failed = find_images(inputs)
    tried = len(paths) + len(failed)
    for f in failed:
        log.warning("skipping %s: %s", f["file"], f["reason"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, info = load_model_ref(model_ref, cfg)
    device = default_device()
    model.to(device).eval()
    size = int(info.get("input_size") or cfg.model.input_size)
    stems = _unique_stems(paths)
    written = 0
    t0 = time.perf_counter()
    with progress_bar(total=len(paths), desc="predict", unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch, names, sources = [], [], []
            for path, stem in zip(paths[start : start + batch_size], stems[start : start + batch_size]):
                try:
                    batch.append(decode_image(path, max_pixels=max_pixels))  # (h, w, 3) RGB uint8, EXIF-rotated
                    names.append(stem)
                    sources.append(path)
                except BadImage as e:
                    failed.append({"file": str(path), "reason": e.reason})
                    log.warning("skipping %s: %s", path, e.reason)
            maps = predict_maps(model, batch, size, batch_size, device)
            for img, stem, source, prob in zip(batch, names, sources, maps):
                mask = (prob > threshold).astype(np.uint8) * 255 if threshold is not None else to_png8(prob)
                mask_path, over_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
                try:  # both files or neither
                    _write_files(
                        {mask_path: _encode_png(mask_path, mask), over_path: _encode_png(over_path, overlay(img, prob))}
                    )
                except (OSError, MemoryError, cv2.error) as e:
                    failed.append({"file": str(source), "reason": f"cannot write its outputs ({e})"})
                    log.warning("skipping %s: cannot write its outputs (%s)", source, e)
                    continue
                written += 1
            bar.update(len(paths[start : start + batch_size]))
    seconds = time.perf_counter() - t0
    summary = {
        "model": {"ref": model_ref, "name": info.get("model"), "input_size": size, "label": info.get("label")},
        "inputs": len(paths),
        "tried": tried,
        "written": written,
        "failed": failed,
        "out_dir": str(out),
        "seconds": round(seconds, 3),
        "images_per_s": round(written / seconds, 2) if seconds > 0 else None,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
