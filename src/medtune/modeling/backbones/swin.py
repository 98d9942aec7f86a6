"""timm Swin Transformers run over slices (channels-last `(N, h, w, C)` tokens)."""

from __future__ import annotations

import torch
from timm.layers import use_fused_attn
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import FeatureInfo, InsertionPoint, SliceBackbone
from medtune.modeling.slicing import SliceContext


class SwinSliceBackbone(SliceBackbone):
    """A timm `SwinTransformer` over slices.

    Features (for a U-shaped decoder): the inputs of stages 0..S-2 (after patch embedding or
    patch merging, before the stage's blocks) and the final LayerNorm of the last stage,
    i.e. for Swin-T `(N, 96, H/4, W/4)`, `(N, 192, H/8, W/8)`, `(N, 384, H/16, W/16)`,
    `(N, 768, H/32, W/32)`.
    """

    family = "swin"
    timm_modules = ("swin_transformer",)
    timm_classes = ("SwinTransformer",)
    capabilities = frozenset({"pre_block", "transformer_blocks", "window_attention"})
    takes_img_size = True
    default_decoder = "swin_unet"

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        self.patch_size = model.patch_embed.patch_size[0]
        idx = 0
        self.stage_channels: list[int] = []
        stage_heads: list[int] = []
        for s, layer in enumerate(model.layers):
            dim = layer.blocks[0].norm1.normalized_shape[0]
            stride = self.patch_size * 2**s
            self.stage_channels.append(dim)
            stage_heads.append(layer.blocks[0].attn.num_heads)
            for b in range(len(layer.blocks)):
                self.insertion_points.append(
                    InsertionPoint(idx, dim, stride, s, b == len(layer.blocks) - 1)
                )
                idx += 1
        n = len(self.stage_channels)
        self.feature_info = [
            FeatureInfo(self.stage_channels[s], self.patch_size * 2**s, stage_heads[s])
            for s in range(n)
        ]
        self.window_size = model.layers[0].blocks[0].window_size[0]
        # timm marks fused attention of its Swin window attention experimental (off unless
        # TIMM_FUSED_ATTN=2); it computes the same softmax(q k^T / sqrt(d) + bias + mask) v
        # through F.scaled_dot_product_attention, which keeps no (N, heads, L, L) matrix.
        for blk in self.transformer_blocks():
            blk.attn.fused_attn = use_fused_attn()

    def fits(self, size: int) -> bool:
        """True when square slices of `size` give every stage a grid its window divides (timm
        shrinks a window to a smaller grid; a window that does not divide its grid would be
        padded with tokens the pre-trained attention never saw)."""
        if size % self.size_divisor:
            return False
        window = max(blk.window_size[0] for layer in self.model.layers for blk in layer.blocks)
        for s in range(len(self.model.layers)):
            grid = size // (self.patch_size * 2**s)
            if grid % min(window, grid):
                return False
        return True

    def check_slice_size(self, hw: tuple[int, int]) -> None:
        if hw[0] != hw[1] or not self.fits(hw[0]):
            div = self.size_divisor
            near = [s for s in range(div, 8 * max(hw) + div, div) if self.fits(s)]
            near = sorted(near, key=lambda s: abs(s - hw[0]))[:4]
            grids = [hw[0] // (self.patch_size * 2**s) for s in range(len(self.model.layers))]
            wins = [
                w
                for w in range(self.window_size - 1, 1, -1)
                if all(g % min(w, g) == 0 for g in grids)
            ]
            alt = (
                f", or backbone.timm_kwargs.window_size: {wins[0]}"
                if wins and hw[0] == hw[1]
                else ""
            )
            raise MedtuneInputError(
                f"backbone {self.timm_name}: slice size {hw[0]}x{hw[1]} does not fit its windows "
                f"(window {self.window_size}, patch {self.patch_size}, {len(self.model.layers)} stages: "
                f"each stage's grid must be a multiple of the window, or smaller than it); square "
                f"sizes that would work: {', '.join(str(s) for s in sorted(near))}{alt}"
            )
        if hw != (self.img_size, self.img_size):
            raise MedtuneInputError(
                f"backbone {self.timm_name}: built for {self.img_size}x{self.img_size} slices "
                f"(window attention masks depend on it), found {hw[0]}x{hw[1]}; set backbone.img_size"
            )

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        m = self.model
        x = m.patch_embed(x)  # (N, h, w, C)
        feats = []
        idx = 0
        last_stage = len(m.layers) - 1
        for s, layer in enumerate(m.layers):
            x = layer.downsample(x)
            if s < last_stage:
                feats.append(x.permute(0, 3, 1, 2))
            for blk in layer.blocks:
                x = self.run_checkpointed(idx, self._step, idx, blk, x, ctx=ctx, block=blk)
                idx += 1
        x = m.norm(x)
        feats.append(x.permute(0, 3, 1, 2))
        return feats

    def _step(self, i: int, blk: nn.Module, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        """Block `i` with the modules inserted before and after it, on `(N, h, w, C)`."""
        return self.run_post(i, blk(self.run_pre(i, x, ctx)), ctx)

    def transformer_blocks(self) -> list[nn.Module]:
        return [blk for layer in self.model.layers for blk in layer.blocks]

    def stage_blocks(self) -> list[list[nn.Module]]:
        return [list(layer.blocks) for layer in self.model.layers]

    def tuned_extra_names(self) -> list[str]:
        return [f"model.norm.{n}" for n, _ in self.model.norm.named_parameters()]

    def input_conv_name(self) -> str:
        return "patch_embed.proj"

    def stage_hidden_info(self) -> dict[str, int]:
        # Stage 0's inter-stage zero state has half the channels at twice the resolution,
        # as if a stage before it had existed (the Med-Tuning release does this).
        return {"stage0_ratio": 2}
