"""A light U-Net-style decoder for CNN backbones (features at strides 2..32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UNetDecoder(nn.Module):
    """Features `[(N, C_i, H/s_i, W/s_i)]` (increasing stride) -> logits `(N, K, H, W)`.

    From the deepest feature up: upsample x2, concatenate the skip, one 3x3 conv + BN + ReLU
    per level to `channels[i]` (default: the skip's channels, at least 16), then a last
    upsampling to the slice size, a 3x3 conv block and a 1x1 head.
    """

    def __init__(
        self, feature_info: list[FeatureInfo], num_classes: int, channels: list[int] | None = None
    ):
        super().__init__()
        c = [f.channels for f in feature_info]
        if channels is None:
            channels = [max(16, ci) for ci in c[:-1]]
        if len(channels) != len(c) - 1:
            raise ValueError(
                f"UNet decoder: expected {len(c) - 1} channel widths, found {len(channels)}"
            )
        self.blocks = nn.ModuleList()
        prev = c[-1]
        for i in range(len(c) - 2, -1, -1):
            self.blocks.append(_conv_bn_relu(prev + c[i], channels[i]))
            prev = channels[i]
        self.final = _conv_bn_relu(prev, max(16, prev // 2))
        self.head = nn.Conv2d(max(16, prev // 2), num_classes, 1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.head(self.final(x))
