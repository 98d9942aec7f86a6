"""SAM's image encoder (timm `VisionTransformerSAM`, `samvit_*`) over slices.

Its blocks run on the patch grid `(N, h, w, C)` (no token sequence, no class token) with
windowed attention (window 14) in most blocks, global attention in the others
(`global_attn_indexes`, 2, 5, 8, 11 for ViT-B) and decomposed relative positions. The neck
(1x1 + 3x3 convs to 256 channels) is dropped: the features are the outputs of the stage-end
blocks (the global-attention blocks), `(N, C, H/16, W/16)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo, SliceBackbone
from medtune.modeling.backbones.vit import plain_vit_points, vit_feature_blocks
from medtune.modeling.slicing import SliceContext


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A SAM relative-position table `(L, d)` -> `(length, d)`, linearly interpolated (what
    SAM's `get_rel_pos` does at run time when the table does not fit the grid)."""
    if table.shape[0] == length:
        return table
    t = table.float().T.unsqueeze(0)  # (1, d, L)
    return F.interpolate(t, size=length, mode="linear")[0].T.to(table.dtype)


class SAMSliceBackbone(SliceBackbone):
    """`VisionTransformerSAM` over slices (see the module docstring)."""

    family = "sam"
    timm_modules = ("vision_transformer_sam",)
    timm_classes = ("VisionTransformerSAM",)
    capabilities = frozenset({"pre_block", "transformer_blocks"})
    capability_notes = {
        "prompt_tokens": "SAM's blocks run on the (h, w) patch grid with windowed attention and "
        "relative positions, so there is no token sequence for prompts to join",
    }
    takes_img_size = True
    default_decoder = "upernet"
    pads_to_patch = True

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        if getattr(model, "rope_global", None) is not None:
            raise ValueError(f"{timm_name}: SAM ViTs with rotary embeddings are not supported")
        model.neck = nn.Identity()  # features come from the blocks
        self.patch_size = model.patch_embed.patch_size[0]
        depth, dim = len(model.blocks), model.embed_dim
        glob = sorted(i for i, b in enumerate(model.blocks) if b.window_size == 0)
        self.feature_blocks = glob if len(glob) == 4 else vit_feature_blocks(depth)
        self.insertion_points = plain_vit_points(depth, dim, self.patch_size, self.feature_blocks)
        heads = model.blocks[0].attn.num_heads
        self.feature_info = [FeatureInfo(dim, self.patch_size, heads) for _ in self.feature_blocks]
        self.window_size = max(b.window_size for b in model.blocks) or None
        self.notes.append(
            f"dropped {timm_name}'s neck: the features are blocks {self.feature_blocks}"
        )

    @property
    def size_divisor(self) -> int:
        return self.patch_size

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        m = self.model
        x = m.patch_embed(x)  # (N, h, w, C)
        if m.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(m.pos_embed, x.shape[1:3])
        x = m.norm_pre(m.patch_drop(m.pos_drop(x)))
        feats = []
        for i, blk in enumerate(m.blocks):
            x = self.run_checkpointed(i, self._step, i, blk, x, ctx=ctx, block=blk)
            if i in self.feature_blocks:
                feats.append(x.permute(0, 3, 1, 2))
        return feats

    def _step(self, i: int, blk: nn.Module, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        """Block `i` with the modules inserted before and after it, on `(N, h, w, C)`."""
        return self.run_post(i, blk(self.run_pre(i, x, ctx)), ctx)

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def tuned_extra_names(self) -> list[str]:
        return ["model.pos_embed"] if getattr(self.model, "pos_embed", None) is not None else []

    def input_conv_name(self) -> str:
        return "patch_embed.proj"

    def fit_state_dict(self, sd: dict[str, Any], report: list[str]) -> dict[str, Any]:
        """SAM's release (`image_encoder.*`, prompt encoder, mask decoder) or timm's layout ->
        this encoder: timm's SAM filter, the neck left out, position embedding and relative
        position tables resized to the slice grid."""
        n_all = len(sd)
        sam_release = any(k.startswith("image_encoder.") for k in sd)
        sd = super().fit_state_dict(sd, report)  # timm's filter: image_encoder.* -> timm names
        if sam_release:
            report.append(
                f"took SAM's image encoder ({len(sd)} tensors); its prompt encoder and mask "
                f"decoder ({n_all - len(sd)} tensors) are left out"
            )
        neck = [k for k in sd if k.startswith("neck.")]
        for k in neck:
            sd.pop(k)
        if neck:
            report.append(
                f"left out SAM's neck ({len(neck)} tensors): features come from the blocks"
            )
        target = self.model.state_dict()
        for k, v in list(sd.items()):
            if k not in target or tuple(v.shape) == tuple(target[k].shape):
                continue
            if k == "pos_embed":
                sd[k] = resample_abs_pos_embed_nhwc(v, target[k].shape[1:3])
                how = "timm resample_abs_pos_embed_nhwc"
            elif k.endswith(("rel_pos_h", "rel_pos_w")):
                sd[k] = resize_rel_pos(v, target[k].shape[0])
                how = "linear, as SAM's get_rel_pos"
            else:
                continue
            report.append(f"resized {k} from {tuple(v.shape)} to {tuple(sd[k].shape)} ({how})")
        return sd
