"""Evaluation metrics of the DIRL reference: per-image AP, F1 and IoU, and their means per sub-dataset.

Per image, at the test resolution:
1. The prediction is min-max normalised (`normalize_map`): (p - min) / (max - min), or p - min when
   max - min < 1e-2. The reference applies the same function to the GT mask: a no-op for a mask holding both
   values, it zeroes an all-foreground mask (and maps a {0, 255} mask to {0, 1}). Both steps run in float32,
   as the reference does on float32 tensors, so ties between prediction values are the reference's.
2. AP equals scikit-learn's ``average_precision_score(gt.ravel(), pred.ravel())``: the step-wise sum over the
   distinct prediction values t (descending) of (R(t) - R(t_prev)) * P(t), where P, R count pixels >= t.
   An image without foreground (an empty mask, or an all-foreground mask after normalisation) gets AP = 0.0,
   which is what scikit-learn 1.9 returns there (with a "No positive class found in y_true" warning; recall
   is set to 1 at every threshold, so the step sum is 0). scikit-learn before 1.1 (PR #19085) returned NaN
   there, which would turn the reported mean into NaN; we follow current scikit-learn. Such an image is still
   counted: it arises when a tiny foreground vanishes at the test resolution (e.g. 3 pixels of a 1000 x 800
   composite, resized bilinear + cut at 0.5 to 224), and it scores AP = F1 = IoU = 0 rather than being dropped.
3. The normalised prediction is binarised at > 0.5: P = TP/(#pred + 1e-6), R = TP/(#gt + 1e-6),
   F1 = 2PR/(P + R + 1e-6), IoU = TP/(union + 1e-6). An empty GT therefore gives F1 = 0 and IoU = 0 (finite,
   no NaN: the 1e-6 terms keep every denominator positive), whatever the prediction.

Reported means: AP x 100, F1 in [0, 1], IoU x 100, overall and per sub-dataset (first letter of the file name).
Vectorised with numpy: two sorts per image (all scores, the positives' scores), no per-pixel Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

NORM_EPS = 1e-2
THRESHOLD = 0.5
EPS = 1e-6
PR_THRESHOLDS = np.linspace(0.0, 1.0, 101)
SUBSETS = {"c": "HCOCO", "a": "HAdobe5k", "f": "HFlickr", "d": "Hday2night"}
SUBSET_ORDER = ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "other"]
_CHUNK_PIXELS = 1 << 21  # pixels normalised per chunk (bounds the temporaries to ~20 MB)


def subset_of(image_id: str) -> str:
    """Sub-dataset of an iHarmony4 image from the first letter of its file name (the reference's rule)."""
    name = PurePath(str(image_id).replace("\\", "/")).name
    return SUBSETS.get(name[:1], "other")


def _as_images(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W), numpy or torch, any real or bool dtype -> float32 numpy (N, H, W)."""
    a = x.detach().to("cpu", torch.float32).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if a.ndim != 3:
        raise ValueError(f"{what} must be (N, H, W) or (N, 1, H, W), got shape {tuple(a.shape)}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    """Per-row min-max normalisation of (n, M) float32 with the reference's 1e-2 rule, in float32."""
    mi = x.min(axis=1, keepdims=True)  # (n, 1)
    rng = x.max(axis=1, keepdims=True) - mi  # (n, 1)
    flat = rng < np.float32(NORM_EPS)  # the reference compares a float32 tensor with 1e-2
    return (x - mi) / np.where(flat, np.float32(1.0), rng)


def normalize_map(p: np.ndarray) -> np.ndarray:
    """Min-max normalise each image: (p - min)/(max - min), or p - min when max - min < 1e-2.

    A 2-D array is one image; an array of 3 or more dimensions is a batch normalised per entry of axis 0.
    Computed in float32 like the reference; returns float32 of the input's shape.
    """
    a = np.asarray(p, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"normalize_map expects an image (H, W) or a batch (N, ...), got shape {a.shape}")
    rows = a.reshape(1, -1) if a.ndim == 2 else a.reshape(a.shape[0], -1)
    return _normalize(rows).reshape(a.shape)


def _image_ap_and_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one image (scikit-learn's) and its counts of pixels / positives with score >= each PR threshold.

    scores (M,) float32, labels (M,) bool. Sorting all scores and the positives' scores once, the precision at
    a positive pixel's score v is #pos(>= v) / #all(>= v); summing it over positive pixels weights each distinct
    threshold by the positives it adds, so AP = mean over positive pixels of that precision, which is the
    step-wise sum of (R(t) - R(t_prev)) * P(t) over distinct thresholds that scikit-learn computes.
    """
    all_sorted = np.sort(scores)  # (M,) ascending
    pos_sorted = np.sort(scores[labels])  # (P,) ascending
    m, n_pos = all_sorted.size, pos_sorted.size
    # searchsorted compares float32 scores with the float64 thresholds in float64
    pred_ge = m - np.searchsorted(all_sorted, PR_THRESHOLDS, side="left")  # (T,)
    tp_ge = n_pos - np.searchsorted(pos_sorted, PR_THRESHOLDS, side="left")  # (T,)
    if n_pos == 0:
        return 0.0, pred_ge, tp_ge  # scikit-learn: recall 1 everywhere, AP 0.0 (with a warning)
    tp = n_pos - np.searchsorted(pos_sorted, pos_sorted, side="left")  # (P,) positives scoring >= v
    n = m - np.searchsorted(all_sorted, pos_sorted, side="left")  # (P,) pixels scoring >= v
    return float(np.sum(tp / n) / n_pos), pred_ge, tp_ge


def _evaluate(preds: np.ndarray, gts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of (N, H, W) float32 arrays: per-image ap/f1/iou and summed PR-curve counts."""
    if preds.shape != gts.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and gts {tuple(gts.shape)} must have the same shape")
    if not np.isfinite(preds).all():
        raise ValueError("preds contain NaN or infinity; check the model output")
    n, m = preds.shape[0], preds.shape[1] * preds.shape[2]
    out: dict[str, Any] = {k: np.zeros(n) for k in ("ap", "f1", "iou")}
    out["pred_ge"] = np.zeros(len(PR_THRESHOLDS), np.int64)
    out["tp_ge"] = np.zeros(len(PR_THRESHOLDS), np.int64)
    out["n_pos"] = 0
    step = max(1, _CHUNK_PIXELS // max(1, m))
    for i in range(0, n, step):
        p = _normalize(preds[i : i + step].reshape(-1, m))  # (n, M) in [0, 1]
        g = _normalize(gts[i : i + step].reshape(-1, m))  # (n, M): all-foreground zeroed
        if not ((g == 0) | (g == 1)).all():
            raise ValueError("gts must be binary masks (at most two distinct values per image); binarise at 0.5")
        lab = g > THRESHOLD  # (n, M) bool
        pb = p > THRESHOLD
        tp = np.count_nonzero(pb & lab, axis=1).astype(np.float64)
        n_pred = np.count_nonzero(pb, axis=1).astype(np.float64)
        n_gt = np.count_nonzero(lab, axis=1).astype(np.float64)
        prec, rec = tp / (n_pred + EPS), tp / (n_gt + EPS)
        out["f1"][i : i + step] = 2 * prec * rec / (prec + rec + EPS)
        out["iou"][i : i + step] = tp / (n_pred + n_gt - tp + EPS)
        for j in range(p.shape[0]):
            ap, pred_ge, tp_ge = _image_ap_and_counts(p[j], lab[j])
            out["ap"][i + j] = ap
            out["pred_ge"] += pred_ge
            out["tp_ge"] += tp_ge
        out["n_pos"] += int(n_gt.sum())
    return out


def per_image_metrics(preds: np.ndarray, gts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image AP, F1 and IoU of predictions (N, H, W) float against binary masks (N, H, W).

    Returns float64 arrays of length N under keys 'ap', 'f1', 'iou', all as fractions in [0, 1].
    """
    out = _evaluate(_as_images(preds, "preds"), _as_images(gts, "gts"))
    return {key: out[key] for key in ("ap", "f1", "iou")}


def _summary(ap: np.ndarray, f1: np.ndarray, iou: np.ndarray) -> dict:
    """Reported means: AP x 100, F1 as a fraction, IoU x 100."""
    return {"n": int(len(ap)), "AP": float(ap.mean() * 100), "F1": float(f1.mean()), "IoU": float(iou.mean() * 100)}


class MetricAccumulator:
    """Collects per-image metrics over batches; reports overall and per-subset means and a PR curve."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._ap: list[np.ndarray] = []
        self._f1: list[np.ndarray] = []
        self._iou: list[np.ndarray] = []
        self._pred_ge = np.zeros(len(PR_THRESHOLDS), np.int64)
        self._tp_ge = np.zeros(len(PR_THRESHOLDS), np.int64)
        self._n_pos = 0

    def __len__(self) -> int:
        return len(self.ids)

    def update(self, preds: np.ndarray | torch.Tensor, gts: np.ndarray | torch.Tensor, ids: Sequence[str]) -> None:
        """Add a batch: preds (N, 1, H, W) or (N, H, W) probabilities, gts the same shape binary, N ids."""
        p, g = _as_images(preds, "preds"), _as_images(gts, "gts")
        ids = [str(i) for i in ids]
        if len(ids) != p.shape[0]:
            raise ValueError(f"got {len(ids)} ids for a batch of {p.shape[0]} predictions")
        out = _evaluate(p, g)
        self.ids.extend(ids)
        self._ap.append(out["ap"])
        self._f1.append(out["f1"])
        self._iou.append(out["iou"])
        self._pred_ge += out["pred_ge"]
        self._tp_ge += out["tp_ge"]
        self._n_pos += int(out["n_pos"])

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return cat(self._ap), cat(self._f1), cat(self._iou)

    def compute(self) -> dict:
        """{'n', 'AP' (x100), 'F1', 'IoU' (x100), 'subsets': {name: {same keys}}} over all images so far."""
        if not self.ids:
            raise ValueError("MetricAccumulator.compute() called before any update(); no images to average")
        ap, f1, iou = self._arrays()
        result = _summary(ap, f1, iou)
        names = np.array([subset_of(i) for i in self.ids])
        result["subsets"] = {
            name: _summary(ap[names == name], f1[names == name], iou[names == name])
            for name in SUBSET_ORDER
            if (names == name).any()
        }
        return result

    def per_image(self) -> list[dict]:
        """One row per image: {'id', 'ap', 'f1', 'iou'} with ap and iou as fractions (not x100)."""
        ap, f1, iou = self._arrays()
        return [{"id": i, "ap": float(a), "f1": float(f), "iou": float(u)} for i, a, f, u in zip(self.ids, ap, f1, iou)]

    def pr_curve(self) -> list[dict]:
        """Pixel-level precision/recall over all images at 101 thresholds t on the normalised prediction.

        A pixel is predicted positive when its normalised prediction is >= t. Where no pixel is predicted,
        precision is 1.0; where the images hold no foreground at all, recall is 1.0 (scikit-learn's conventions).
        """
        rows = []
        for t, n_pred, tp in zip(PR_THRESHOLDS, self._pred_ge, self._tp_ge):
            precision = tp / n_pred if n_pred > 0 else 1.0
            recall = tp / self._n_pos if self._n_pos > 0 else 1.0
            rows.append({"threshold": round(float(t), 4), "precision": float(precision), "recall": float(recall)})
        return rows


def centre_prior(h: int, w: int, sigma_frac: float = 0.25) -> np.ndarray:
    """Centred Gaussian map (h, w) float32 with peak 1: std sigma_frac * h vertically, sigma_frac * w across.

    The trivial "the odd region is near the middle" baseline that every accuracy figure is reported next to.
    """
    if h < 1 or w < 1 or not sigma_frac > 0:
        raise ValueError(f"centre_prior needs h, w >= 1 and sigma_frac > 0, got h={h}, w={w}, sigma_frac={sigma_frac}")
    y = (np.arange(h) - (h - 1) / 2.0) / (sigma_frac * h)  # (h,)
    x = (np.arange(w) - (w - 1) / 2.0) / (sigma_frac * w)  # (w,)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)  # (h, w)


def baseline_metrics(gts: np.ndarray | torch.Tensor, ids: Sequence[str], sigma_frac: float = 0.25) -> dict:
    """Metrics (as `MetricAccumulator.compute`) of the centre prior on the given masks (N, [1,] H, W)."""
    g = _as_images(gts, "gts")
    n, h, w = g.shape
    prior = np.broadcast_to(centre_prior(h, w, sigma_frac), (n, h, w))
    acc = MetricAccumulator()
    acc.update(prior, g, ids)
    return acc.compute()


__all__ = [
    "MetricAccumulator",
    "baseline_metrics",
    "centre_prior",
    "normalize_map",
    "per_image_metrics",
    "subset_of",
]
