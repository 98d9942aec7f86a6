"""The SETR decoders (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence
Perspective with Transformers", CVPR 2021), written from the paper's description, for
single-scale ViT features `[(N, C, H/p, W/p)] x 4` (any backbone's features work: sizes come
from `feature_info`, and every level is resized where resolutions differ).

- `setr_naive`: the last feature -> 1x1 conv + BN + ReLU -> 1x1 conv to K -> bilinear to the slice.
- `setr_pup` (progressive upsampling): the last feature -> log2(p) rounds of 3x3 conv + BN +
  ReLU and a 2x bilinear upsampling (the last round lands on the slice size) -> 1x1 conv to K.
- `setr_mla` (multi-level aggregation): one stream per feature level: 1x1 conv halving the
  channels, top-down element-wise addition from the deepest stream, a 3x3 conv, a 3x3 conv
  halving again, 4x bilinear upsampling; the streams are concatenated, a 1x1 conv gives K
  classes, bilinear to the slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    """`k x k` conv (no bias) + BatchNorm + ReLU, size-preserving."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SETRNaiveDecoder(nn.Module):
    """Last feature `(N, C, h, w)` -> logits `(N, K, H, W)` (SETR-Naive)."""

    def __init__(self, feature_info: list[FeatureInfo], num_classes: int, channels: int = 256):
        super().__init__()
        self.proj = conv_bn_relu(feature_info[-1].channels, channels, 1)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        return _up(self.head(self.proj(feats[-1])), out_size)


class SETRPUPDecoder(nn.Module):
    """Last feature `(N, C, H/p, W/p)` -> logits `(N, K, H, W)` through round(log2 p) rounds of
    3x3 conv + BN + ReLU then 2x upsampling (SETR-PUP: 4 rounds for patch 16)."""

    def __init__(self, feature_info: list[FeatureInfo], num_classes: int, channels: int = 256):
        super().__init__()
        rounds = max(1, round(math.log2(feature_info[-1].stride)))
        cins = [feature_info[-1].channels] + [channels] * (rounds - 1)
        self.stages = nn.ModuleList(conv_bn_relu(c, channels, 3) for c in cins)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x = feats[-1]
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            size = out_size if i == last else (2 * x.shape[-2], 2 * x.shape[-1])
            x = _up(x, size)
        return self.head(x)


class SETRMLADecoder(nn.Module):
    """Features `[(N, C_i, h_i, w_i)]` -> logits `(N, K, H, W)` (SETR-MLA, see module docstring).

    `channels` is each stream's width after its first conv (default: half the feature's
    channels, 384 for ViT-B); the third conv halves it again.
    """

    def __init__(
        self, feature_info: list[FeatureInfo], num_classes: int, channels: int | None = None
    ):
        super().__init__()
        c = [f.channels for f in feature_info]
        width = channels or c[-1] // 2
        self.reduce = nn.ModuleList(conv_bn_relu(ci, width, 1) for ci in c)
        self.mix = nn.ModuleList(conv_bn_relu(width, width, 3) for _ in c)
        self.halve = nn.ModuleList(conv_bn_relu(width, width // 2, 3) for _ in c)
        self.head = nn.Conv2d(len(c) * (width // 2), num_classes, 1)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        streams = [r(f) for r, f in zip(self.reduce, feats)]
        for i in range(len(streams) - 2, -1, -1):  # top-down aggregation by addition
            streams[i] = streams[i] + _up(streams[i + 1], streams[i].shape[-2:])
        h0, w0 = streams[0].shape[-2:]
        size = (min(out_size[0], 4 * h0), min(out_size[1], 4 * w0))  # 4x, as the paper
        outs = [_up(h(m(s)), size) for s, m, h in zip(streams, self.mix, self.halve)]
        return _up(self.head(torch.cat(outs, dim=1)), out_size)
