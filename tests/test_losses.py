"""The DIRL loss: its parts against independent formulas, weighting, autocast safety and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dirl.losses import DIRLLoss, bce, iou_loss, map_loss, ssim


def ssim_reference(p: np.ndarray, g: np.ndarray) -> float:
    """SSIM written out in float64: 11x11 Gaussian (sigma 1.5) weighted sums over zero-padded shifts."""
    k, sigma, c1, c2 = 11, 1.5, 0.01**2, 0.03**2
    x = np.arange(k) - k // 2
    w1 = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(w1, w1) / w1.sum() ** 2
    out = []
    for a, b in zip(p.astype(np.float64), g.astype(np.float64)):  # each (H, W)
        h, wd = a.shape

        def filt(img):
            padded = np.pad(img, k // 2)
            return sum(w[i, j] * padded[i : i + h, j : j + wd] for i in range(k) for j in range(k))

        mu_a, mu_b = filt(a), filt(b)
        var_a = filt(a * a) - mu_a**2
        var_b = filt(b * b) - mu_b**2
        cov = filt(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        out.append(s)
    return float(np.mean(out))


def random_pair(seed: int, b: int = 2, h: int = 20, w: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, h // 4 : 3 * h // 4, w // 3 : w - 2] = 1.0
    pred = (0.6 * mask + 0.4 * torch.rand(b, 1, h, w, generator=gen)).clamp(0, 1)
    return pred, mask


def test_ssim_matches_direct_formula():
    pred, mask = random_pair(0)
    expected = ssim_reference(pred[:, 0].numpy(), mask[:, 0].numpy())
    assert ssim(pred, mask).item() == pytest.approx(expected, abs=1e-5)
    noise = torch.rand(2, 1, 20, 23, generator=torch.Generator().manual_seed(1))
    expected = ssim_reference(noise[:, 0].numpy(), mask[:, 0].numpy())
    assert ssim(noise, mask).item() == pytest.approx(expected, abs=1e-5)
    assert ssim(mask, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_bce_matches_clamped_formula():
    p = torch.tensor([[[[0.0, 1.0, 0.3], [0.9, 1.0, 0.0]]]])
    g = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]])
    # per pixel: 0, 0, -log .3, -log .1, 100 (log 0 clamped), 100; mean over 6 pixels
    expected = (-math.log(0.3) - math.log(0.1) + 200.0) / 6
    assert bce(p, g).item() == pytest.approx(expected, rel=1e-6)


def test_iou_loss_by_hand():
    # image 1: P = [[1, .5], [0, 0]], G = [[1, 1], [0, 0]]: inter 1.5, union 2 + 1.5 - 1.5 = 2 -> 1 - .75 = .25
    # image 2: P = .5 everywhere, G empty: inter 0 -> loss 1. Batch mean: .625
    p = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    g = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    assert iou_loss(p, g).item() == pytest.approx(0.625, abs=1e-7)
    assert torch.isfinite(iou_loss(torch.zeros_like(g), g))  # 0/0 guarded: empty mask, all-zero map


def test_perfect_prediction_is_near_zero_and_wrong_one_is_large():
    _, mask = random_pair(2)
    parts = map_loss(mask, mask)
    assert parts["bce"].item() == pytest.approx(0.0, abs=1e-7)
    assert parts["ssim"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["iou"].item() == pytest.approx(0.0, abs=1e-7)
    total, logged = DIRLLoss()([mask] * 6, mask)
    assert total.item() == pytest.approx(0.0, abs=1e-4)
    wrong = map_loss(1 - mask, mask)
    assert wrong["bce"].item() == pytest.approx(100.0)  # every log clamped at -100
    assert wrong["iou"].item() == pytest.approx(1.0)
    assert wrong["ssim"].item() > 0.5


def test_lam_weighting_aux_and_single_output():
    pred, mask = random_pair(3)
    a1 = (pred * 0.5 + 0.25).clamp(0, 1)
    a2 = pred.flip(-1)
    l_final = map_loss(pred, mask)["total"].item()
    l_a1 = map_loss(a1, mask)["total"].item()
    l_a2 = map_loss(a2, mask)["total"].item()
    total, parts = DIRLLoss(lam=0.5)([pred, a1, a2], mask)
    assert total.item() == pytest.approx(l_final + 0.5 * (l_a1 + l_a2), rel=1e-6)
    assert parts["final"] == pytest.approx(l_final, rel=1e-6)
    assert parts["aux"] == pytest.approx(l_a1 + l_a2, rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())
    assert parts["final"] == pytest.approx(parts["bce"] + parts["ssim"] + parts["iou"], rel=1e-6)
    no_aux, _ = DIRLLoss(aux=False)([pred, a1, a2], mask)
    single, single_parts = DIRLLoss(lam=0.5)([pred], mask)
    assert no_aux.item() == pytest.approx(l_final, rel=1e-6)
    assert single.item() == pytest.approx(l_final, rel=1e-6) and single_parts["aux"] == 0.0
    bce_iou, p2 = DIRLLoss(use_ssim=False)([pred], mask)
    assert p2["ssim"] == 0.0
    assert bce_iou.item() == pytest.approx(bce(pred, mask).item() + iou_loss(pred, mask).item(), rel=1e-6)
    bce_only, p3 = DIRLLoss(use_ssim=False, use_iou=False)([pred], mask)
    assert bce_only.item() == pytest.approx(F.binary_cross_entropy(pred, mask).item(), rel=1e-6)


def test_autocast_bf16_safe_and_float32():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(2, 3, 16, 16) * 20  # large logits: sigmoid saturates to exact 0 and 1 in bf16
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        maps = [torch.sigmoid(logits[:, :1]), torch.sigmoid(logits[:, 1:])]
        assert maps[0].dtype == torch.bfloat16
        total, parts = DIRLLoss()(maps, mask)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(math.isfinite(v) for v in parts.values())
    expected, _ = DIRLLoss()([m.float() for m in maps], mask)  # same maps, computed outside autocast
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_gradients_reach_every_supervised_map():
    _, mask = random_pair(4)
    logits = [torch.randn(2, 1, 20, 23, requires_grad=True) for _ in range(3)]
    total, _ = DIRLLoss()([torch.sigmoid(z) for z in logits], mask)
    total.backward()
    for z in logits:
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    logits = [torch.randn(2, 1, 20, 23, requires_grad=True) for _ in range(2)]
    DIRLLoss(aux=False)([torch.sigmoid(z) for z in logits], mask)[0].backward()
    assert logits[0].grad.abs().sum() > 0 and logits[1].grad is None


def test_bad_shapes_raise_clear_errors():
    pred, mask = random_pair(5)
    loss = DIRLLoss()
    with pytest.raises(ValueError, match="mask is"):
        loss([pred], mask[..., :10, :])
    with pytest.raises(ValueError, match="output 1 is"):
        loss([pred, F.interpolate(pred, scale_factor=0.5)], mask)
    with pytest.raises(ValueError, match="batch"):
        loss([pred[:1]], mask)
    with pytest.raises(ValueError, match="empty"):
        loss([], mask)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        loss([pred], mask[:, 0])
