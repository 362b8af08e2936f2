"""Loss benchmark: the DIRL loss (six maps, BCE + SSIM + IoU) with SSIM's Gaussian window as banded matrix
products (``dirl.losses``) against the baseline, the 11x11 grouped 2-D convolution, run in the same process.

    python benchmarks/bench_loss.py [--size 96] [--batch 16] [--threads 2] [--repeat 10]

Prints the forward + backward time of each and the ratio (baseline / ours), and checks that both give the same
loss to float precision.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dirl.losses import SSIM_C1, SSIM_C2, DIRLLoss, gaussian_window


def conv_ssim_loss(maps: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The baseline: the same loss, SSIM by an 11x11 grouped conv2d with zero padding 5."""
    win = gaussian_window().to(mask.dtype).expand(5, 1, 11, 11)
    total = mask.new_zeros(())
    for p in maps:
        x = torch.cat([p, mask, p * p, mask * mask, p * mask], dim=1)
        mu1, mu2, e11, e22, e12 = F.conv2d(x, win, padding=5, groups=5).unbind(1)
        s = (
            (2 * mu1 * mu2 + SSIM_C1)
            * (2 * (e12 - mu1 * mu2) + SSIM_C2)
            / ((mu1**2 + mu2**2 + SSIM_C1) * (e11 - mu1**2 + e22 - mu2**2 + SSIM_C2))
        ).mean()
        inter = (p * mask).flatten(1).sum(1)
        iou = (1 - inter / (mask.flatten(1).sum(1) + p.flatten(1).sum(1) - inter)).mean()
        total = total + F.binary_cross_entropy(p, mask) + (1 - s) + iou
    return total


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96, help="map side (the model input size)")
    ap.add_argument("--batch", type=int, default=16, help="images per batch")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeat", type=int, default=10, help="timed repetitions (median reported)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(a.batch, 1, a.size, a.size, generator=g) > 0.7).float()
    maps = [torch.rand(a.batch, 1, a.size, a.size, generator=g).clamp(0.01, 0.99).requires_grad_() for _ in range(6)]
    loss = DIRLLoss()
    ours, _ = loss(maps, mask)
    base = conv_ssim_loss(maps, mask)
    assert torch.allclose(ours, base, rtol=1e-5, atol=1e-5), (ours.item(), base.item())

    def run_ours():
        loss(maps, mask)[0].backward()

    def run_base():
        conv_ssim_loss(maps, mask).backward()

    t_base, t_ours = timed(run_base, a.repeat), timed(run_ours, a.repeat)
    print(
        f"DIRL loss fwd+bwd, 6 maps of {a.batch}x1x{a.size}x{a.size}, {a.threads} threads: "
        f"baseline conv2d SSIM {t_base * 1000:.1f} ms, banded-matmul SSIM {t_ours * 1000:.1f} ms, "
        f"ratio {t_base / t_ours:.2f}x (loss {ours.item():.6f} vs {base.item():.6f})"
    )


if __name__ == "__main__":
    main()
