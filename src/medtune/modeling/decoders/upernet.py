"""UPerNet decoder (pyramid pooling + FPN), as the Med-Tuning release uses on ViT-B/16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo


def _conv_bn(
    cin: int, cout: int, k: int, act: type[nn.Module], bias: bool = False
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), act()
    )


class UPerNetDecoder(nn.Module):
    """Features `[(N, C_i, h_i, w_i)] x 4` -> logits `(N, K, H, W)`.

    Level 0 first passes a 1x1 conv (with bias) + BN + GELU to `channels`; pyramid pooling
    (bins 1, 2, 4, 6; `C_last // 4` channels each) on the last level, reduced back to `C_last`
    by a 3x3 conv + BN + ReLU + Dropout2d(0.1); lateral 1x1 convs (with bias) for levels 1..3;
    top-down upsample-and-add; one 3x3 smoothing conv shared by the merged levels 0..2 (the
    release shares it, which the parameter counts reflect); concat of the four levels
    upsampled to level 0, fused by a 3x3 conv + BN + ReLU; a 3x3 head conv; bilinear
    upsampling to the slice size.
    """

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        channels: int = 256,
        pool_bins: tuple[int, ...] = (1, 2, 4, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        if len(feature_info) != 4:
            raise ValueError(f"UPerNet expects 4 feature levels, found {len(feature_info)}")
        c = [f.channels for f in feature_info]
        last = c[-1]
        ppm_c = last // 4
        self.first = _conv_bn(c[0], channels, 1, nn.GELU, bias=True)
        self.pool_bins = pool_bins
        self.ppm = nn.ModuleList(_conv_bn(last, ppm_c, 1, nn.ReLU) for _ in pool_bins)
        self.ppm_bottleneck = nn.Sequential(
            _conv_bn(last + len(pool_bins) * ppm_c, last, 3, nn.ReLU), nn.Dropout2d(dropout)
        )
        self.laterals = nn.ModuleList(nn.Conv2d(ci, channels, 1) for ci in c[1:])
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)
        self.fuse = _conv_bn(4 * channels, channels, 3, nn.ReLU)
        self.head = nn.Conv2d(channels, num_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x_last = feats[-1]
        pooled = [x_last]
        for bins, branch in zip(self.pool_bins, self.ppm):
            p = branch(F.adaptive_avg_pool2d(x_last, bins))
            pooled.append(
                F.interpolate(p, size=x_last.shape[-2:], mode="bilinear", align_corners=False)
            )
        top = self.ppm_bottleneck(torch.cat(pooled, dim=1))
        levels = [
            self.first(feats[0]),
            self.laterals[0](feats[1]),
            self.laterals[1](feats[2]),
            self.laterals[2](top),
        ]
        for i in range(3, 0, -1):  # top-down
            up = F.interpolate(
                levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
            levels[i - 1] = levels[i - 1] + up
        outs = [self.smooth(levels[i]) for i in range(3)] + [levels[3]]
        size0 = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size0, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        x = self.head(self.fuse(torch.cat(outs, dim=1)))
        return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
