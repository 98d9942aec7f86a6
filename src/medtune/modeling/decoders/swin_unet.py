"""The Swin-UNet decoder: patch expanding, skip concatenation and Swin blocks (channels-last)."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo


def _shuffle_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """`(N, h, w, f*f*c)` -> `(N, f*h, f*w, c)` (pixel shuffle, channels-last)."""
    n, h, w, c = x.shape
    c_out = c // (factor * factor)
    x = x.reshape(n, h, w, factor, factor, c_out).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * factor, w * factor, c_out)


class PatchExpand(nn.Module):
    """`(N, h, w, d)` -> `(N, f*h, f*w, d_out)`: bias-free Linear, pixel shuffle, LayerNorm."""

    def __init__(self, dim: int, factor: int = 2, dim_out: int | None = None):
        super().__init__()
        dim_out = dim // factor if dim_out is None else dim_out
        self.factor = factor
        self.expand = nn.Linear(dim, factor * factor * dim_out, bias=False)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_shuffle_up(self.expand(x), self.factor))


class UpStage(nn.Module):
    """Concatenate the skip, reduce `2d -> d`, two Swin blocks, then (optionally) expand."""

    def __init__(
        self, dim: int, heads: int, resolution: int, window: int, depth: int, expand: bool
    ):
        super().__init__()
        self.reduce = nn.Linear(2 * dim, dim)
        self.blocks = nn.Sequential(
            *[
                SwinTransformerBlock(
                    dim,
                    input_resolution=(resolution, resolution),
                    num_heads=heads,
                    window_size=window,
                    shift_size=0 if i % 2 == 0 else window // 2,
                )
                for i in range(depth)
            ]
        )
        self.upsample = PatchExpand(dim) if expand else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.reduce(torch.cat([x, skip], dim=-1))
        x = self.blocks(x)
        return self.upsample(x) if self.upsample is not None else x


class SwinUNetDecoder(nn.Module):
    """Features (stage inputs + normed bottleneck, NCHW) -> logits `(N, K, H, W)`.

    Stage-up 0 expands the bottleneck; stage-ups 1..S-1 each concatenate the encoder skip of
    the same resolution, reduce, run `depth` Swin blocks (heads and window of the matching
    encoder stage) and expand (but the last); then LayerNorm, a final patch-size expand and a
    bias-free 1x1 conv. `init_from_encoder` copies the encoder's (pre-trained) blocks into
    the matching decoder blocks, as Swin-UNet does.
    """

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        heads: list[int],
        window_size: int,
        img_size: int,
        depth: int = 2,
    ):
        super().__init__()
        dims = [f.channels for f in feature_info]
        strides = [f.stride for f in feature_info]
        n = len(dims)
        self.patch = strides[0]
        self.expand0 = PatchExpand(dims[-1])
        self.stages = nn.ModuleList()
        for i in range(1, n):
            s = n - 1 - i  # encoder stage with the same resolution
            res = img_size // strides[s]
            self.stages.append(
                UpStage(dims[s], heads[s], res, window_size, depth, expand=i < n - 1)
            )
        self.norm_up = nn.LayerNorm(dims[0])
        self.final_expand = PatchExpand(dims[0], factor=self.patch, dim_out=dims[0])
        self.head = nn.Conv2d(dims[0], num_classes, 1, bias=False)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        tokens = [f.permute(0, 2, 3, 1) for f in feats]  # (N, h, w, C)
        x = self.expand0(tokens[-1])
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x, tokens[len(tokens) - 1 - i])
        x = self.final_expand(self.norm_up(x))
        return self.head(x.permute(0, 3, 1, 2))

    @torch.no_grad()
    def init_from_encoder(self, encoder_stages: list[list[nn.Module]]) -> list[str]:
        """Copy the (pre-trained) blocks of encoder stage `s` (`Backbone.stage_blocks()`) into
        the decoder stage of the same resolution."""
        copied = []
        n = len(encoder_stages)
        for i, stage in enumerate(self.stages, start=1):
            enc = encoder_stages[n - 1 - i]
            for j, blk in enumerate(stage.blocks):
                if j < len(enc):
                    blk.load_state_dict(enc[j].state_dict())
                    copied.append(f"stages.{i - 1}.blocks.{j} <- layers.{n - 1 - i}.blocks.{j}")
        return copied
