"""timm Vision Transformers run over slices: tokens form an `h x w` patch grid, after the
model's prefix tokens (class token, register tokens) and any prompt tokens a method adds.

Prefix tokens run through the frozen blocks with the grid; inserted `post_block` modules see
the grid only (they mix across slices on the patch grid), and the prefix tokens are put back
in front of the grid before the next block.
"""

from __future__ import annotations

from typing import Any

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


def plain_vit_points(depth: int, dim: int, stride: int, feature_blocks: list[int]):
    """Insertion points of a single-scale ViT: stages are the groups ending at `feature_blocks`."""
    ends = set(feature_blocks)
    points, stage = [], 0
    for i in range(depth):
        points.append(InsertionPoint(i, dim, stride, stage, i in ends))
        if i in ends:
            stage += 1
    return points


class ViTSliceBackbone(SliceBackbone):
    """A timm `VisionTransformer` over slices.

    Stages are four equal groups of blocks; the stage ends (blocks 2, 5, 8, 11 of a ViT-B)
    give the features `(N, C, H/p, W/p)`. The final LayerNorm is applied after the last
    block's inserted module, before the last feature is taken (as the Med-Tuning release
    does). Class and register tokens (`num_prefix_tokens`) stay in front of the grid; slices
    whose size is not a multiple of the patch are zero-padded to the next multiple.
    """

    family = "vit"
    timm_modules = ("vision_transformer",)
    timm_classes = ("VisionTransformer",)
    capabilities = frozenset({"pre_block", "transformer_blocks", "prompt_tokens"})
    takes_img_size = True
    default_decoder = "upernet"
    pads_to_patch = True

    @classmethod
    def build_kwargs(cls, timm_name: str) -> dict[str, Any]:
        return {"global_pool": "", "dynamic_img_size": True}

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError(
                f"{timm_name}: attention-pool heads are not supported (set global_pool='')"
            )
        self.patch_size = model.patch_embed.patch_size[0]
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        """Class / register tokens the model keeps in front of the patch grid."""
        depth = len(model.blocks)
        dim = model.embed_dim
        self.feature_blocks = vit_feature_blocks(depth)
        self.insertion_points = plain_vit_points(depth, dim, self.patch_size, self.feature_blocks)
        heads = getattr(model.blocks[0].attn, "num_heads", None)
        self.feature_info = [FeatureInfo(dim, self.patch_size, heads) for _ in self.feature_blocks]

    @property
    def size_divisor(self) -> int:
        return self.patch_size

    # --- the family's token layout ----------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Slices `(N, C, H, W)` -> tokens `(N, prefix + h*w, C)` and what blocks need besides."""
        m = self.model
        x = m.patch_embed(x)  # (N, h, w, C) with dynamic_img_size, else (N, L, C)
        x = m._pos_embed(x)  # prefix tokens in front, position embedding added
        x = m.patch_drop(x)
        return m.norm_pre(x), None

    def run_block(self, blk: nn.Module, x: torch.Tensor, front: int, extra: Any) -> torch.Tensor:
        """One frozen block on tokens `(N, front + h*w, C)` (`front`: prefix + prompt tokens)."""
        return blk(x)

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        m = self.model
        n, _, hh, ww = x.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        x, extra = self.embed(x)
        feats = []
        last = len(m.blocks) - 1

        def step(
            i: int, blk: nn.Module, x: torch.Tensor, ctx: SliceContext
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """Tokens -> (next tokens, grid `(N, h, w, C)`) through block `i` and its modules."""
            x = self.run_pre(i, x, ctx)
            front = x.shape[1] - h * w  # prefix tokens and any prompt tokens a method added
            x = self.run_block(blk, x, front, extra)
            grid = self.run_post(i, x[:, front:].reshape(n, h, w, -1), ctx)
            if i == last:
                grid = m.norm(grid)
            tokens = grid.reshape(n, h * w, -1)
            return (torch.cat([x[:, :front], tokens], dim=1) if front else tokens), grid

        for i, blk in enumerate(m.blocks):
            x, grid = self.run_checkpointed(i, step, i, blk, x, ctx=ctx, block=blk)
            if i in self.feature_blocks:
                feats.append(grid.permute(0, 3, 1, 2))
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
