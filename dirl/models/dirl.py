"""DIRL (Liang, Niu, Zhang, ICME 2021): the reference network, and `dirl_lite`, a reduced-compute variant.

Written from the method spec (docs: shared/reference/DIRL.md). For an H x W input (H, W multiples of 16):

    encoder  stem 3x3/1 conv(bias)+BN+ReLU @H -> h1 layer1 64@H -> h2 layer2 128@H/2 -> h3 layer3 256@H/4
             -> h4 layer4 512@H/8 -> maxpool -> h5 3 x BasicBlock(512) 512@H/16          35,438,976 params
    BFI      F0 = h2l(h1,h2)@H, F1..F3 = hl2m(...)@H/2..H/8, F4 = l2h(h4,h5)@H/16, 32 ch   17,857,632 params
    MDA x5   ECA channel attention + spatial gate A_k (supervised by the mask)      10,853 params each
    GGD      three guided steps F4 -> F3 -> F2 -> F1 (no nonlinearity), x2, 1x1 conv   111,201 params
    outputs  [final, A4, A3, A2, A1, A0], each (B, 1, H, W) float32 probabilities

Total 53,462,074 parameters. The reference code also builds a 3x3 conv + BN (9,280 parameters) in the
outermost GGD block that its forward never calls; it is left out here, hence 53,462,074 instead of the
reference's 53,471,354. Both BNs of the MDA spatial gate use momentum 0.01 (the reference builds both with its
`BasicConv`, whose BN has momentum 0.01). Sigmoids of the output maps are taken in float32 (under bf16/fp16
autocast too) so probabilities near 0 and 1 keep their precision for the BCE loss.

`dirl_lite` is NOT the paper's model: it swaps the full-resolution stride-1 stem for torchvision's 7x7/2 conv +
max-pool, so layer1 runs at H/4 and every later scale is 4x smaller (about 1/16 of the compute), then
up-samples the final logits bilinearly to H x W. Same modules and output contract otherwise; for CPU demos.
53,469,690 parameters (the 7x7 stem replaces the 3x3 one); forward GFLOPs per image: 4.3 at 128, 13.4 at 224
(DIRL: 68.2 and 208.8). Its fifth stage sits at H/64: at 64 px that is 1x1, so a train-mode step needs a batch
of at least 2 there (BatchNorm needs more than one value per channel); 80 px and larger have no such limit.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .resnet import BasicBlock, ResNet34Segmenter, init_resnet_, make_layer, resnet34_layers

BFI_CHANNELS = 32
WIDTHS = (64, 128, 256, 512, 512)  # channels of h1..h5 (ResNet-34 + the fifth stage)
BLOCKS = (3, 4, 6, 3, 3)  # BasicBlocks of h1..h5


def up_nearest(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest up-sampling of x to ref's size (equals `interpolate(scale_factor=2)` when the size doubles)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


def up_bilinear_ac(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling with align_corners=True (GGD)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def to_prob(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float32 sigmoid of logits, bilinearly resized (align_corners=False) to `size` when it differs."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)


# ----------------------------------------------------------------------------- encoder


class DIRLEncoder(nn.Module):
    """ResNet-34 encoder with a new stem and a fifth stage; returns [h1, h2, h3, h4, h5].

    stem="full" (paper): 3x3 stride-1 conv with bias + BN + ReLU, h1..h5 at H, H/2, H/4, H/8, H/16.
    stem="resnet" (dirl_lite): torchvision's 7x7/2 conv + BN + ReLU + 3x3/2 max-pool, h1..h5 at H/4..H/64.
    stem="half" (dirl_tiny): 3x3 stride-2 conv with bias + BN + ReLU, h1..h5 at H/2..H/32.
    ``widths``/``blocks``: channels and BasicBlocks of h1..h5 (default ResNet-34's (64, 128, 256, 512, 512) and
    (3, 4, 6, 3, 3)); only the default keeps torchvision's layer1..layer4 keys compatible with ImageNet weights.
    """

    def __init__(self, stem: str = "full", widths: tuple[int, ...] = WIDTHS, blocks: tuple[int, ...] = BLOCKS):
        super().__init__()
        c1 = widths[0]
        if stem == "full":
            self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, 1, 1, bias=True), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
        elif stem == "resnet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, c1, 7, 2, 3, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        elif stem == "half":
            self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, 2, 1, bias=True), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown DIRL stem {stem!r}; use 'full' (paper), 'resnet' (dirl_lite) or 'half'")
        if tuple(widths) == WIDTHS and tuple(blocks) == BLOCKS:
            layers = resnet34_layers()
            self.layer1, self.layer2, self.layer3, self.layer4 = (layers[f"layer{i}"] for i in range(1, 5))
        else:
            self.layer1 = make_layer(c1, widths[0], blocks[0])
            self.layer2 = make_layer(widths[0], widths[1], blocks[1], stride=2)
            self.layer3 = make_layer(widths[1], widths[2], blocks[2], stride=2)
            self.layer4 = make_layer(widths[2], widths[3], blocks[3], stride=2)
            init_resnet_(nn.ModuleList([self.layer1, self.layer2, self.layer3, self.layer4]))
        self.pool5 = nn.MaxPool2d(3, 2, 1)
        self.layer5 = nn.Sequential(
            BasicBlock(widths[3], widths[4]), *(BasicBlock(widths[4], widths[4]) for _ in range(blocks[4] - 1))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # shapes for stem="full" and the default widths
        x = self.stem(x)  # (B, 3, H, W) -> (B, 64, H, W)
        h1 = self.layer1(x)  # (B, 64, H, W)
        h2 = self.layer2(h1)  # (B, 64, H, W) -> (B, 128, H/2, W/2)
        h3 = self.layer3(h2)  # -> (B, 256, H/4, W/4)
        h4 = self.layer4(h3)  # -> (B, 512, H/8, W/8)
        h5 = self.layer5(self.pool5(h4))  # -> (B, 512, H/16, W/16)
        return [h1, h2, h3, h4, h5]


# ----------------------------------------------------------------------------- BFI


class PreActConv(nn.Module):
    """BFI's conv unit: ReLU -> Conv3x3(bias) -> BN ('pre-activation')."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)))  # (B, cin, h, w) -> (B, cout, h/stride, w/stride)


class TwoScaleFusion(nn.Module):
    """BFI block with a low-level input xl (cl @ h) and a high-level one xh (ch @ h/2).

    mode="h2l" outputs at xl's scale, mode="l2h" at xh's scale.
    """

    def __init__(self, cl: int, ch: int, mode: str, out: int = BFI_CHANNELS):
        super().__init__()
        if mode not in ("h2l", "l2h"):
            raise ValueError(f"unknown two-scale BFI mode {mode!r}")
        self.mode = mode
        self.td = PreActConv(ch, cl)  # top-down
        self.bu = PreActConv(cl, ch, stride=2)  # bottom-up
        self.lc = PreActConv(2 * cl, out, stride=1 if mode == "h2l" else 2)
        self.hc = PreActConv(2 * ch, out)

    def forward(self, xl: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
        t = xl + self.td(up_nearest(xh, xl))  # (B, ch, h/2, w/2) -> (B, ch, h, w) -> (B, cl, h, w)
        b = xh + self.bu(xl)  # (B, cl, h, w) -> (B, ch, h/2, w/2)
        cat_l = torch.cat([t, xl], 1)  # (B, 2cl, h, w)
        cat_h = torch.cat([xh, b], 1)  # (B, 2ch, h/2, w/2)
        if self.mode == "h2l":
            return self.lc(cat_l) + self.hc(up_nearest(cat_h, xl))  # (B, out, h, w)
        return self.lc(cat_l) + self.hc(cat_h)  # (B, out, h/2, w/2)


class ThreeScaleFusion(nn.Module):
    """BFI 'hl2m' block: xl (cl @ h), xm (cm @ h/2), xh (ch @ h/4) -> out channels at xm's scale."""

    def __init__(self, cl: int, cm: int, ch: int, out: int = BFI_CHANNELS):
        super().__init__()
        self.td_hm = PreActConv(ch, cm)
        self.td_ml = PreActConv(cm, cl)
        self.bu_lm = PreActConv(cl, cm, stride=2)
        self.bu_mh = PreActConv(cm, ch, stride=2)
        self.lc = PreActConv(2 * cl, out, stride=2)
        self.mc = PreActConv(2 * cm, out)
        self.hc = PreActConv(2 * ch, out)

    def forward(self, xl: torch.Tensor, xm: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
        xh2m = self.td_hm(up_nearest(xh, xm)) + xm  # (B, ch, h/4, w/4) -> (B, cm, h/2, w/2)
        xm2l = self.td_ml(up_nearest(xh2m, xl)) + xl  # (B, cm, h/2, w/2) -> (B, cl, h, w)
        xl2m = self.bu_lm(xl) + xm  # (B, cl, h, w) -> (B, cm, h/2, w/2)
        xm2h = self.bu_mh(xl2m) + xh  # (B, cm, h/2, w/2) -> (B, ch, h/4, w/4)
        lo = self.lc(torch.cat([xm2l, xl], 1))  # (B, 2cl, h, w) -> (B, out, h/2, w/2)
        mid = self.mc(torch.cat([xh2m, xl2m], 1))  # (B, 2cm, h/2, w/2) -> (B, out, h/2, w/2)
        hi = self.hc(up_nearest(torch.cat([xh, xm2h], 1), xm))  # (B, 2ch, h/4, w/4) -> (B, out, h/2, w/2)
        return lo + mid + hi


class BFI(nn.Module):
    """Bi-directional Feature Integration: [h1..h5] -> [F0..F4], 32 channels each at H, H/2, .., H/16."""

    def __init__(self, chans: tuple[int, ...] = (64, 128, 256, 512, 512), out: int = BFI_CHANNELS):
        super().__init__()
        c1, c2, c3, c4, c5 = chans
        self.f0 = TwoScaleFusion(c1, c2, "h2l", out)
        self.f1 = ThreeScaleFusion(c1, c2, c3, out)
        self.f2 = ThreeScaleFusion(c2, c3, c4, out)
        self.f3 = ThreeScaleFusion(c3, c4, c5, out)
        self.f4 = TwoScaleFusion(c4, c5, "l2h", out)

    def forward(self, h: list[torch.Tensor]) -> list[torch.Tensor]:
        h1, h2, h3, h4, h5 = h
        return [
            self.f0(h1, h2),  # (B, 64, H, W), (B, 128, H/2, W/2) -> (B, 32, H, W)
            self.f1(h1, h2, h3),  # -> (B, 32, H/2, W/2)
            self.f2(h2, h3, h4),  # -> (B, 32, H/4, W/4)
            self.f3(h3, h4, h5),  # -> (B, 32, H/8, W/8)
            self.f4(h4, h5),  # (B, 512, H/8, W/8), (B, 512, H/16, W/16) -> (B, 32, H/16, W/16)
        ]


# ----------------------------------------------------------------------------- MDA


class ECA(nn.Module):
    """Efficient channel attention: global average pool -> Conv1d(k=3) across channels -> sigmoid -> x * w."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv(x.mean((2, 3)).unsqueeze(1))  # (B, C, h, w) -> (B, 1, C)
        return x * torch.sigmoid(w).transpose(1, 2).unsqueeze(-1).to(x.dtype)  # (B, C, 1, 1) * (B, C, h, w)


class MDA(nn.Module):
    """Mask-guided Dual Attention: returns (x_ca * A + x_ca, A) with A (B, 1, h, w) a float32 probability map."""

    def __init__(self, c: int = BFI_CHANNELS):
        super().__init__()
        self.eca = ECA()
        self.gate = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c, momentum=0.01),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, 1, 7, 1, 3, bias=False),
            nn.BatchNorm2d(1, momentum=0.01),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_ca = self.eca(x)  # (B, 32, h, w)
        a = torch.sigmoid(self.gate(x_ca).float())  # (B, 32, h, w) -> (B, 1, h, w)
        return x_ca * a.to(x_ca.dtype) + x_ca, a


# ----------------------------------------------------------------------------- GGD


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias) + BN, no nonlinearity (GGD)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


class GGDStep(nn.Module):
    """One guided step: x_up = BN(conv(up2(up))) * f; x_bottom = BN(conv(up2(bottom))); out = BN(conv([..]))."""

    def __init__(self, c: int = BFI_CHANNELS):
        super().__init__()
        self.conv_up = conv_bn(c, c)
        self.conv_bottom = conv_bn(c, c)
        self.conv_cat = conv_bn(2 * c, c)

    def forward(self, f: torch.Tensor, up: torch.Tensor, bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_up = self.conv_up(up_bilinear_ac(up, f.shape[-2:])) * f  # (B, 32, h/2, w/2) -> (B, 32, h, w)
        x_bottom = self.conv_bottom(up_bilinear_ac(bottom, f.shape[-2:]))  # (B, 32, h/2, w/2) -> (B, 32, h, w)
        out = self.conv_cat(torch.cat([x_up, x_bottom], 1))  # (B, 64, h, w) -> (B, 32, h, w)
        return out, x_bottom


class GGD(nn.Module):
    """Global-context Guided Decoder over [F1, F2, F3, F4] (after MDA); returns logits at 2x F1's size."""

    def __init__(self, c: int = BFI_CHANNELS):
        super().__init__()
        self.steps = nn.ModuleList(GGDStep(c) for _ in range(3))  # for F3, F2, F1
        self.head = nn.Conv2d(c, 1, 1, bias=True)

    def forward(self, f: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        f1, f2, f3, f4 = f
        up = bottom = f4  # (B, 32, H/16, W/16)
        for step, fk in zip(self.steps, (f3, f2, f1)):
            up, bottom = step(fk, up, bottom)  # -> (B, 32, H/8), then H/4, then H/2
        return self.head(up_bilinear_ac(up, out_size))  # (B, 32, H/2, W/2) -> (B, 32, H, W) -> (B, 1, H, W)


# ----------------------------------------------------------------------------- model


class DIRL(ResNet34Segmenter):
    """DIRL: returns [final, A4, A3, A2, A1, A0], each (B, 1, H, W) float32 in [0, 1].

    stem="full" is the paper's network; stem="resnet" is `dirl_lite` (see the module docstring).
    `pretrained` (path or URL of a torchvision resnet34 state dict, sha256-checked against
    `pretrained_sha256`) loads ImageNet weights into layer1..layer4; random init otherwise.
    """

    output_names = ("final", "A4", "A3", "A2", "A1", "A0")

    def __init__(
        self,
        stem: str = "full",
        pretrained: str | None = None,
        pretrained_sha256: str | None = None,
        widths: tuple[int, ...] = WIDTHS,
        blocks: tuple[int, ...] = BLOCKS,
        channels: int = BFI_CHANNELS,
    ):
        super().__init__()
        self.encoder = DIRLEncoder(stem, tuple(widths), tuple(blocks))
        self.size_divisor = 32 if stem == "half" else 16  # h5 sits at H/32 with the stride-2 stem
        self.bfi = BFI(tuple(widths), channels)
        self.mda = nn.ModuleList(MDA(channels) for _ in range(5))  # mda[k] for F_k
        self.ggd = GGD(channels)
        if pretrained and (tuple(widths) != WIDTHS or tuple(blocks) != BLOCKS):
            raise ValueError(
                "ImageNet weights (model.pretrained) fit only the ResNet-34 widths and blocks; "
                "this DIRL variant is narrower: leave model.pretrained empty"
            )
        if pretrained:
            self.backbone_pretrained(pretrained, pretrained_sha256)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        size = (x.shape[-2], x.shape[-1])
        h = self.encoder(x)  # (B, 3, H, W) -> [h1 (B, 64, H, W), .., h5 (B, 512, H/16, W/16)]
        fs = self.bfi(h)  # -> [F0 (B, 32, H, W), .., F4 (B, 32, H/16, W/16)]
        feats, attn = [], []
        for mda, f in zip(self.mda, fs):
            fk, ak = mda(f)  # (B, 32, h, w) -> (B, 32, h, w), (B, 1, h, w)
            feats.append(fk)
            attn.append(ak)
        logits = self.ggd(feats[1:], fs[0].shape[-2:])  # F1..F4 -> (B, 1, H, W) (H/4 for dirl_lite)
        final = to_prob(logits, size)  # (B, 1, H, W)
        maps = [
            a if tuple(a.shape[-2:]) == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            for a in reversed(attn)
        ]  # A4, A3, A2, A1, A0 -> (B, 1, H, W)
        return [final, *maps]


@register_model("dirl")
def dirl(pretrained: str | None = None, pretrained_sha256: str | None = None) -> DIRL:
    """The paper's DIRL (53,462,074 parameters, ~209 GFLOPs at 224x224)."""
    return DIRL("full", pretrained, pretrained_sha256)


@register_model("dirl_lite")
def dirl_lite(pretrained: str | None = None, pretrained_sha256: str | None = None) -> DIRL:
    """Reduced-compute DIRL for CPU demos (NOT the paper's model): torchvision stem, layer1 at H/4."""
    return DIRL("resnet", pretrained, pretrained_sha256)


@register_model("dirl_tiny")
def dirl_tiny(pretrained: str | None = None, pretrained_sha256: str | None = None) -> DIRL:
    """A really small DIRL for CPU training (NOT the paper's model): same BFI / MDA / GGD, 3x3 stride-2 stem,
    one BasicBlock per stage with widths (16, 32, 64, 128, 128) and 16-channel BFI; random init only."""
    return DIRL(
        "half", pretrained, pretrained_sha256, widths=(16, 32, 64, 128, 128), blocks=(1, 1, 1, 1, 1), channels=16
    )


@register_model("dirl_tiny_deep")
def dirl_tiny_deep(pretrained: str | None = None, pretrained_sha256: str | None = None) -> DIRL:
    """``dirl_tiny`` with two BasicBlocks in each of stages 3-5 (NOT the paper's model): 2.6 M parameters for ~7 %
    more training time at 96 px, the deeper stages' extra capacity where the feature maps are small."""
    return DIRL(
        "half", pretrained, pretrained_sha256, widths=(16, 32, 64, 128, 128), blocks=(1, 1, 2, 2, 2), channels=16
    )
