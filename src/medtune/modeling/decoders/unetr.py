"""A UNETR-style decoder for single-scale ViT features (Hatamizadeh et al., "UNETR: Transformers
for 3D Medical Image Segmentation", WACV 2022), on slices, built from MONAI's UNETR blocks
with `spatial_dims=2`.

The features after blocks 3, 6, 9, 12 (medtune's stage ends) are `(N, C, H/p, W/p)`. As in
the paper, the deepest is upsampled by a 2x2 transposed conv and merged with the next
feature, itself brought to that resolution by a chain of transposed convs (+ residual conv
blocks); and so on up to the full resolution, where the skip is a residual conv block on the
input slice; a 1x1 conv gives K classes. A patch of p = 2^L pixels gives L upsampling steps
(4 for p = 16); the skips are the last L - 1 features before the deepest (for p = 8 the first
feature is not used; patches over 16 are refused). A patch that is not a power of two (DINOv2's 14) runs the decoder at
`h * 2^L` pixels (the input skip is resized to it) and resizes the logits to the slice.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo


class UNETRDecoder(nn.Module):
    """Features `[(N, C, h, w)] x 4` and the slices `(N, C_in, H, W)` -> logits `(N, K, H, W)`.

    `feature_size` is MONAI UNETR's: the input skip has `f` channels, the skip of stride
    `2^j` has `f * 2^j`; `norm` is MONAI's norm name (UNETR: instance).
    """

    uses_input: ClassVar[bool] = True
    """The model passes the (padded) slices as the third argument."""

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        in_chans: int,
        feature_size: int = 16,
        norm: str = "instance",
    ):
        super().__init__()
        stride = feature_info[-1].stride
        if any(fi.stride != stride for fi in feature_info):
            raise ValueError(
                "unetr expects single-scale features (a ViT's); this backbone's strides are "
                f"{[fi.stride for fi in feature_info]}: use decoder.name: unet"
            )
        levels = max(1, round(math.log2(stride)))
        skips = levels - 1
        if skips > len(feature_info) - 1:
            raise ValueError(
                f"unetr: a patch of {stride} pixels needs {skips} skip features besides the "
                f"deepest, the backbone has {len(feature_info) - 1}"
            )
        self.levels = levels
        self.skip_features = list(range(len(feature_info) - 1 - skips, len(feature_info) - 1))
        """Indices of the features used as skips (shallowest first)."""
        dim, f = feature_info[-1].channels, feature_size
        self.input_skip = UnetrBasicBlock(2, in_chans, f, 3, 1, norm, res_block=True)
        # the skip of feature skip_features[j] sits at stride 2^(j + 1): levels - j - 1
        # doublings from the grid (a transposed conv, then num_layer more)
        self.encoders = nn.ModuleList(
            UnetrPrUpBlock(
                2,
                dim,
                f * 2 ** (j + 1),
                levels - j - 2,
                3,
                1,
                2,
                norm,
                conv_block=True,
                res_block=True,
            )
            for j in range(skips)
        )
        widths = [f * 2**j for j in range(levels)]  # stride 1, 2, ..., 2^(levels-1)
        ups, cin = [], dim
        for j in range(levels - 1, -1, -1):
            ups.append(UnetrUpBlock(2, cin, widths[j], 3, 2, norm, res_block=True))
            cin = widths[j]
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(f, num_classes, 1)

    def forward(
        self, feats: list[torch.Tensor], out_size: tuple[int, int], image: torch.Tensor
    ) -> torch.Tensor:
        h, w = feats[-1].shape[-2:]
        size = (h * 2**self.levels, w * 2**self.levels)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        skips = [self.input_skip(image)]  # stride 1, 2, ..., 2^(levels - 1)
        skips += [enc(feats[k]) for enc, k in zip(self.encoders, self.skip_features)]
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        x = self.head(x)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return x
