"""The DIRL training loss: BCE + (1 - SSIM) + IoU on the final map and on every attention map.

Per map (P a probability map, G the binary ground-truth mask, both (B, 1, H, W)):

    l(P, G) = BCE(P, G) + (1 - SSIM(P, G)) + IoU-loss(P, G)

- BCE: mean over pixels and batch, log terms clamped to >= -100 (torch's ``BCELoss``).
- SSIM: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding 5, mean over pixels and batch.
- IoU-loss: per image 1 - sum(P G) / (sum G + sum P - sum(P G)), mean over the batch.

Total = l(final) + lam * sum_k l(A_k) over the attention maps A_k. Everything is computed in float32 with
autocast disabled, so the loss is safe inside a bf16/fp16 autocast region.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
IOU_EPS = 1e-12  # guards 0/0 only (empty mask and an exactly-zero map); the reference has no epsilon


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """2-D Gaussian window (size, size), normalised to sum 1, as the outer product of a 1-D window."""
    g = torch.tensor([math.exp(-((x - size // 2) ** 2) / (2.0 * sigma**2)) for x in range(size)])
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size)


def ssim(pred: Tensor, target: Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Mean SSIM of two (B, 1, H, W) maps: Gaussian-weighted local statistics, zero padding window//2."""
    b, c, h, w = pred.shape
    if c != 1:
        raise ValueError(f"ssim expects single-channel maps (B, 1, H, W), got {tuple(pred.shape)}")
    win = gaussian_window(window_size, sigma).to(pred.device, pred.dtype)
    win = win.expand(5, 1, window_size, window_size)  # (5, 1, k, k): one copy per statistic
    # the five local moments in one grouped convolution: E[P], E[G], E[P^2], E[G^2], E[PG]
    x = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)  # (B, 5, H, W)
    m = F.conv2d(x, win, padding=window_size // 2, groups=5)  # (B, 5, H, W)
    mu1, mu2, e11, e22, e12 = m.unbind(dim=1)  # each (B, H, W)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    num = (2 * mu12 + SSIM_C1) * (2 * sigma12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2)
    return (num / den).mean()


def iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Soft IoU loss: per image 1 - sum(PG) / (sum G + sum P - sum PG), mean over the batch."""
    inter = (pred * target).flatten(1).sum(1)  # (B,)
    union = target.flatten(1).sum(1) + pred.flatten(1).sum(1) - inter  # (B,)
    return (1.0 - inter / union.clamp_min(IOU_EPS)).mean()


def bce(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy, mean over all pixels; torch clamps each log term to >= -100."""
    return F.binary_cross_entropy(pred, target)


def map_loss(pred: Tensor, target: Tensor, use_ssim: bool = True, use_iou: bool = True) -> dict[str, Tensor]:
    """l(P, G) of one map and its parts: {'bce', 'ssim' (1 - SSIM), 'iou', 'total'}, float32 tensors."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        p, g = pred.float(), target.float()
        parts = {"bce": bce(p, g)}
        zero = p.new_zeros(())
        parts["ssim"] = 1.0 - ssim(p, g) if use_ssim else zero
        parts["iou"] = iou_loss(p, g) if use_iou else zero
        parts["total"] = parts["bce"] + parts["ssim"] + parts["iou"]
    return parts


class DIRLLoss(nn.Module):
    """Deep supervision loss: l(final) + lam * sum over attention maps of l(A_k).

    `outputs` is the model's list of probability maps, each (B, 1, H, W) in [0, 1]: the final map first, then
    the attention maps (DIRL: five; single-output baselines: none). With `aux=False` only the final map counts.
    Returns the total (a float32 scalar tensor with gradient) and a dict of floats for logging.
    """

    def __init__(self, lam: float = 1.0, use_ssim: bool = True, use_iou: bool = True, aux: bool = True):
        super().__init__()
        self.lam = float(lam)
        self.use_ssim = use_ssim
        self.use_iou = use_iou
        self.aux = aux

    def forward(self, outputs: list[Tensor] | Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        maps = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        if not maps:
            raise ValueError("DIRLLoss got an empty list of outputs; pass the model's list of maps")
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        for k, m in enumerate(maps):
            if m.dim() != 4 or m.shape[1] != 1:
                raise ValueError(f"output {k} must be (B, 1, H, W), got {tuple(m.shape)}")
            if m.shape[0] != mask.shape[0]:
                raise ValueError(f"output {k} has batch {m.shape[0]} but the mask has batch {mask.shape[0]}")
            if m.shape[-2:] != mask.shape[-2:]:
                raise ValueError(
                    f"output {k} is {tuple(m.shape[-2:])} but the mask is {tuple(mask.shape[-2:])}: "
                    "the loss compares full-resolution maps; up-sample the output or resize the mask"
                )
        target = mask.float()
        final = map_loss(maps[0], target, self.use_ssim, self.use_iou)
        aux_maps = maps[1:] if self.aux else []
        aux_total = final["total"].new_zeros(())
        for m in aux_maps:
            aux_total = aux_total + map_loss(m, target, self.use_ssim, self.use_iou)["total"]
        total = final["total"] + self.lam * aux_total
        names = ["bce", "ssim", "iou", "final", "aux", "total"]
        values = torch.stack([final["bce"], final["ssim"], final["iou"], final["total"], aux_total, total])
        parts = dict(zip(names, values.detach().cpu().tolist()))  # one device sync for all six
        return total, parts
