"""timm Vision Transformers run over slices (no class token; tokens form an `h x w` grid)."""

from __future__ import annotations

import torch
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo, InsertionPoint, SliceBackbone
from medtune.modeling.slicing import SliceContext


def vit_feature_blocks(depth: int, n_levels: int = 4) -> list[int]:
    """Blocks whose outputs feed the decoder: evenly spaced stage ends (12 -> 2, 5, 8, 11)."""
    if depth < n_levels:
        raise ValueError(
            f"a ViT needs at least {n_levels} blocks for {n_levels} feature levels, found {depth}"
        )
    return [round(depth * (k + 1) / n_levels) - 1 for k in range(n_levels)]


class ViTSliceBackbone(SliceBackbone):
    """A timm `VisionTransformer` (class_token=False) over slices.

    Stages are the four equal groups of blocks; the stage ends (blocks 2, 5, 8, 11 of a ViT-B)
    give the features `(N, C, H/p, W/p)`. The final LayerNorm is applied after the last block's
    inserted module, before the last feature is taken (as the Med-Tuning release does).
    """

    family = "vit"
    capabilities = frozenset({"pre_block", "transformer_blocks", "prompt_tokens"})
    default_decoder = "upernet"

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        if (
            getattr(model, "cls_token", None) is not None
            or getattr(model, "reg_token", None) is not None
        ):
            raise ValueError(
                f"{timm_name}: medtune's ViT family expects class_token=False and no register tokens"
            )
        depth = len(model.blocks)
        dim = model.embed_dim
        self.patch_size = model.patch_embed.patch_size[0]
        self.feature_blocks = vit_feature_blocks(depth)
        ends = set(self.feature_blocks)
        stage = 0
        for i in range(depth):
            self.insertion_points.append(InsertionPoint(i, dim, self.patch_size, stage, i in ends))
            if i in ends:
                stage += 1
        self.feature_info = [FeatureInfo(dim, self.patch_size) for _ in self.feature_blocks]

    @property
    def size_divisor(self) -> int:
        return self.patch_size

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        m = self.model
        n, _, hh, ww = x.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        x = m.patch_embed(x)  # (N, h, w, C) with dynamic_img_size, else (N, L, C)
        x = m._pos_embed(x)  # (N, L, C)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        feats = []
        last = len(m.blocks) - 1
        for i, blk in enumerate(m.blocks):
            x = self.run_pre(i, x, ctx)
            x = blk(x)
            extra = x.shape[1] - h * w  # prompt tokens in front of the grid, if a method added any
            grid = x[:, extra:].reshape(n, h, w, -1)
            grid = self.run_post(i, grid, ctx)
            if i == last:
                grid = m.norm(grid)
            if i in self.feature_blocks:
                feats.append(grid.permute(0, 3, 1, 2))
            tokens = grid.reshape(n, h * w, -1)
            x = torch.cat([x[:, :extra], tokens], dim=1) if extra else tokens
        return feats

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def tuned_extra_names(self) -> list[str]:
        names = []
        if getattr(self.model, "pos_embed", None) is not None:
            names.append("model.pos_embed")
        names += [f"model.norm.{n}" for n, _ in self.model.norm.named_parameters()]
        return names

    def input_conv_name(self) -> str:
        return "patch_embed.proj"
