"""UNet baseline on a ResNet-34 encoder (the 'UNet' row of the DIRL paper's comparison table).

Encoder: the standard torchvision ResNet-34 trunk (7x7/2 stem + max-pool, not DIRL's full-resolution stem),
skips at H/2 (stem), H/4, H/8, H/16; bottleneck layer4 at H/32. Decoder (as in segmentation-models-pytorch's
Unet): five blocks, each nearest x2 up-sampling (to the skip's size) + concat skip + 2 x (conv3x3-BN-ReLU),
with 256, 128, 64, 32, 16 channels; then conv3x3 -> 1 logit and a float32 sigmoid. Output: [final].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .resnet import ResNet34Features, ResNet34Segmenter


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Up-sample x to 2x (or the skip's size), concat the skip, two conv3x3-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + cskip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="nearest")  # (B, cin, h, w) -> (B, cin, 2h, 2w)
        if skip is not None:
            x = torch.cat([x, skip], 1)  # -> (B, cin + cskip, 2h, 2w)
        return self.conv2(self.conv1(x))  # -> (B, cout, 2h, 2w)


class UNet(ResNet34Segmenter):
    """ResNet-34 UNet; returns [final] with final (B, 1, H, W) float32 in [0, 1]."""

    def __init__(
        self,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        pretrained: str | None = None,
        pretrained_sha256: str | None = None,
    ):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {decoder_channels}")
        d4, d3, d2, d1, d0 = decoder_channels
        self.encoder = ResNet34Features(output_stride=32)
        self.dec4 = DecoderBlock(512, 256, d4)
        self.dec3 = DecoderBlock(d4, 128, d3)
        self.dec2 = DecoderBlock(d3, 64, d2)
        self.dec1 = DecoderBlock(d2, 64, d1)
        self.dec0 = DecoderBlock(d1, 0, d0)
        self.head = nn.Conv2d(d0, 1, 3, 1, 1)
        if pretrained:
            self.backbone_pretrained(pretrained, pretrained_sha256)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x0, x1, x2, x3, x4 = self.encoder(x)  # H/2 (64), H/4 (64), H/8 (128), H/16 (256), H/32 (512)
        d = self.dec4(x4, x3)  # (B, 512, H/32, W/32) -> (B, 256, H/16, W/16)
        d = self.dec3(d, x2)  # -> (B, 128, H/8, W/8)
        d = self.dec2(d, x1)  # -> (B, 64, H/4, W/4)
        d = self.dec1(d, x0)  # -> (B, 32, H/2, W/2)
        d = self.dec0(d)  # -> (B, 16, H, W)
        return [torch.sigmoid(self.head(d).float())]  # -> (B, 1, H, W)


@register_model("unet")
def unet(
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    pretrained: str | None = None,
    pretrained_sha256: str | None = None,
) -> UNet:
    """UNet baseline on ResNet-34 (24.4 M parameters)."""
    return UNet(tuple(decoder_channels), pretrained, pretrained_sha256)
