"""DeepLabv3 baseline on a ResNet-34 encoder (the 'DeepLabv3' row of the DIRL paper's comparison table).

Encoder: the standard torchvision ResNet-34 trunk (7x7/2 stem + max-pool) with output stride 16 by default
(layer4 dilated by 2; ASPP rates 6, 12, 18, as in the DeepLabv3 paper's training setting) or 8 (layer3 and
layer4 dilated by 2 and 4; rates doubled to 12, 24, 36). ASPP: 1x1 conv, three 3x3 atrous convs and an
image-pooling branch, 256 channels each, concatenated and projected to 256 (1x1 conv-BN-ReLU, dropout 0.1).
The image-pooling branch is conv1x1(bias)+ReLU without BN, so that training with batch size 1 works.
Head: conv3x3-BN-ReLU, conv1x1 -> 1 logit, bilinear up-sampling to H x W, float32 sigmoid. Output: [final].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .resnet import ResNet34Features, ResNet34Segmenter


def conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, 1, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three 3x3 atrous and an image-pooling branch -> 1x1 projection."""

    def __init__(self, cin: int = 512, c: int = 256, rates: tuple[int, int, int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, c, 1)] + [conv_bn_relu(cin, c, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, c, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(5 * c, c, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]  # 4 x (B, 256, h, w)
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))  # (B, 512, h, w) -> (B, 256, 1, 1) -> (B, 256, h, w)
        return self.project(torch.cat(outs, 1))  # (B, 1280, h, w) -> (B, 256, h, w)


class DeepLabV3(ResNet34Segmenter):
    """ResNet-34 DeepLabv3; returns [final] with final (B, 1, H, W) float32 in [0, 1]."""

    def __init__(self, output_stride: int = 16, pretrained: str | None = None, pretrained_sha256: str | None = None):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"DeepLabv3 output_stride must be 8 or 16, got {output_stride}")
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.encoder = ResNet34Features(output_stride=output_stride)
        self.aspp = ASPP(512, 256, rates)
        self.head = nn.Sequential(conv_bn_relu(256, 256, 3), nn.Conv2d(256, 1, 1))
        if pretrained:
            self.backbone_pretrained(pretrained, pretrained_sha256)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x4 = self.encoder(x)[-1]  # (B, 3, H, W) -> (B, 512, H/16, W/16)
        logits = self.head(self.aspp(x4))  # -> (B, 256, H/16, W/16) -> (B, 1, H/16, W/16)
        logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return [torch.sigmoid(logits)]  # (B, 1, H, W)


@register_model("deeplabv3")
def deeplabv3(
    output_stride: int = 16, pretrained: str | None = None, pretrained_sha256: str | None = None
) -> DeepLabV3:
    """DeepLabv3 baseline on ResNet-34 (ASPP rates 6, 12, 18 at output stride 16)."""
    return DeepLabV3(output_stride, pretrained, pretrained_sha256)
