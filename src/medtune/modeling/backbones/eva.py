"""timm `Eva` ViTs over slices: EVA-02, DINOv3 (`vit_base_patch16_dinov3`), Perception
Encoder: class / register tokens, rotary position embeddings (RoPE) in every attention.

The layout is the ViT family's (prefix tokens in front of the patch grid, the grid alone goes
through inserted modules); each block also takes the rotary embedding of the grid. Tokens a
method puts in front (prompts) get the identity rotation, as the prefix tokens do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medtune.modeling.backbones.vit import ViTSliceBackbone


def pad_rope(rope: torch.Tensor | None, extra: int) -> torch.Tensor | None:
    """Rotary embedding `(..., L, 2*d)` (sin then cos, timm's `cat` layout) -> `(..., extra + L,
    2*d)` with identity rotations (sin 0, cos 1) for `extra` tokens in front of the grid."""
    if rope is None or extra <= 0:
        return rope
    half = rope.shape[-1] // 2
    shape = (*rope.shape[:-2], extra, half)
    ident = torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1)
    return torch.cat([ident, rope], dim=-2)


class EvaSliceBackbone(ViTSliceBackbone):
    """A timm `Eva` over slices (see the module docstring); stages and features as the ViT's."""

    family = "eva"
    timm_modules = ("eva",)
    timm_classes = ("Eva",)

    @classmethod
    def build_kwargs(cls, timm_name: str) -> dict[str, Any]:
        return {"global_pool": "", "dynamic_img_size": True}

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        if getattr(model, "rope_mixed", False):
            raise ValueError(
                f"{timm_name}: depth-dependent (mixed) rotary embeddings are not supported"
            )
        super().__init__(model, name, timm_name, in_chans, img_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        m = self.model
        x = m.patch_embed(x)
        x, rope = m._pos_embed(x)  # (N, prefix + h*w, C), rope (h*w, 2*d) or None
        return m.norm_pre(x), rope

    def run_block(self, blk: nn.Module, x: torch.Tensor, front: int, extra: Any) -> torch.Tensor:
        # Eva attention rotates all tokens after its `num_prefix_tokens`; prompts count as grid
        # tokens there, so they get identity rotations.
        return blk(x, rope=pad_rope(extra, front - self.num_prefix_tokens))
