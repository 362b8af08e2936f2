"""Contact sheets of shard rows: composite | mask | real | overlay, one row per item, labelled."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from dirl.data.images import decode_image, decode_mask

TILE = 192


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """Tint the mask's region of an RGB uint8 image and outline it: (H, W, 3) -> (H, W, 3)."""
    out = image.copy()
    fg = mask.astype(bool)
    out[fg] = (out[fg] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, 2)
    return out


def _tile(img: np.ndarray, label: str = "") -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    tile = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
    if label:
        cv2.rectangle(tile, (0, 0), (TILE, 16), (0, 0, 0), -1)
        cv2.putText(tile, label[:28], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def contact_sheet(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write a PNG with one line per shard row (composite | mask | real | overlay) and return its path."""
    lines = []
    for row in rows:
        image = decode_image(row["image"])
        mask = decode_mask(row["mask"])[0]
        real = decode_image(row["real"]) if row.get("real") else np.zeros_like(image)
        method = row.get("synth_method") or row.get("source", "")
        lines.append(np.concatenate([
            _tile(image, f"{row['id']} {method}"), _tile(mask * 255, "mask"),
            _tile(real, "real" if row.get("real") else "real: n/a"), _tile(overlay(image, mask), "overlay"),
        ], axis=1))
    sheet = np.concatenate(lines, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    os.replace(tmp, path)
    return path
