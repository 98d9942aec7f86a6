"""The Swin UNETR decoder (Hatamizadeh et al., 2022) from MONAI's own blocks, for volumes.

Sized from the backbone's `feature_info`: six volumetric features `[(B, c_i, D/s_i, H/s_i,
W/s_i)]` with strides 1, 2, 4, 8, 16, 32 (the input, the patch embedding and the four stage
outputs of a native 3D encoder). The modules and their names are MONAI `SwinUNETR`'s:

    encoder1   UnetrBasicBlock  input          c_0 -> c_1   (full resolution skip)
    encoder2/3/4 UnetrBasicBlock features 1-3  c_i -> c_i
    encoder10  UnetrBasicBlock  feature 5      c_5 -> c_5   (bottleneck)
    decoder5   UnetrUpBlock     c_5 -> c_4, skip feature 4 as it is
    decoder4/3/2 UnetrUpBlock   c_i -> c_(i-1), skip encoder4/3/2
    decoder1   UnetrUpBlock     c_1 -> c_1, skip encoder1
    out        UnetOutBlock     c_1 -> K     -> logits (B, K, D, H, W)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import FeatureInfo

STRIDES = (1, 2, 4, 8, 16, 32)


def _instance_like(norm_name: tuple | str) -> bool:
    name = norm_name[0] if isinstance(norm_name, (tuple, list)) else norm_name
    return str(name).lower().startswith("instance")


class SwinUNETRDecoder(nn.Module):
    """Features of a native 3D encoder -> logits `(B, K, D, H, W)` (module docstring)."""

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        norm_name: tuple | str = "instance",
        res_block: bool = True,
    ):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        strides = tuple(f.stride for f in feature_info)
        if strides != STRIDES:
            raise MedtuneInputError(
                f"decoder swin_unetr: expects features at strides {list(STRIDES)} (input, patch "
                f"embedding, 4 stages of a native 3D encoder), found {list(strides)}"
            )
        c = [f.channels for f in feature_info]
        self.norm_name = norm_name

        def basic(cin: int, cout: int) -> nn.Module:
            return UnetrBasicBlock(3, cin, cout, 3, 1, norm_name, res_block=res_block)

        def up(cin: int, cout: int) -> nn.Module:
            return UnetrUpBlock(3, cin, cout, 3, 2, norm_name, res_block=res_block)

        self.encoder1 = basic(c[0], c[1])
        self.encoder2 = basic(c[1], c[1])
        self.encoder3 = basic(c[2], c[2])
        self.encoder4 = basic(c[3], c[3])
        self.encoder10 = basic(c[5], c[5])
        self.decoder5 = up(c[5], c[4])
        self.decoder4 = up(c[4], c[3])
        self.decoder3 = up(c[3], c[2])
        self.decoder2 = up(c[2], c[1])
        self.decoder1 = up(c[1], c[1])
        self.out = UnetOutBlock(3, c[1], num_classes)

    def _check(self, feats: list[torch.Tensor], out_size: tuple[int, ...]) -> None:
        if len(feats) != len(STRIDES) or tuple(feats[0].shape[2:]) != tuple(out_size):
            raise MedtuneInputError(
                f"decoder swin_unetr: expected {len(STRIDES)} volumetric features, the first at "
                f"the output size {tuple(out_size)}; found {[tuple(f.shape) for f in feats]}"
            )
        deepest = feats[-1].shape[2:]
        if _instance_like(self.norm_name) and math.prod(deepest) == 1:
            size = "x".join(map(str, out_size))
            raise MedtuneInputError(
                f"decoder swin_unetr: a {size} window leaves one voxel at stride 32, where instance "
                "norm has nothing to normalise; use crops and windows of at least 64 along one "
                "axis (e.g. 64x32x32, 96^3) or decoder.options.norm_name: batch"
            )

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, ...]) -> torch.Tensor:
        """Features (module docstring) -> logits `(B, K, D, H, W)` at `out_size` `(D, H, W)`."""
        self._check(feats, out_size)
        x_in, h0, h1, h2, h3, h4 = feats
        enc0 = self.encoder1(x_in)
        enc1 = self.encoder2(h0)
        enc2 = self.encoder3(h1)
        enc3 = self.encoder4(h2)
        dec4 = self.encoder10(h4)
        dec3 = self.decoder5(dec4, h3)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))
