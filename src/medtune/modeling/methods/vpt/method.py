"""VPT-Shallow and VPT-Deep on ViT (prompt tokens) and Swin (prompted window attention)."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.vpt.config import VPTConfig
from medtune.modeling.methods.vpt.layer import PromptedWindowAttention, PromptTokens


class VisualPromptTuning(TuningMethod):
    """ViT: prompts enter the token sequence before block 0 (shallow: they then flow through
    every block) or are replaced by fresh ones before every block (deep). Swin: every prompted
    block's window attention also attends to P prompt keys/values shared by all windows;
    shallow prompts block 0 only, deep every block (P tokens of that block's width)."""

    config_cls = VPTConfig
    requires = frozenset({"transformer_blocks", "slices"})
    requires_any = frozenset({"prompt_tokens", "window_attention"})
    wrapper_segments = ("wrapped",)
    unsupported_reason = (
        "prompt tokens need a token sequence (ViT) or Swin's window attention to join "
        "(use st_adapter, pro_tuning or med_adapter)"
    )
    deep: ClassVar[bool] = False

    def insert(self, model: nn.Module) -> None:
        cfg: VPTConfig = self.config
        backbone = model.backbone
        patch_inputs = backbone.in_chans * backbone.patch_size**2
        blocks = backbone.transformer_blocks()
        tokens = "prompt_tokens" in backbone.capabilities  # else prompted window attention
        count = len(blocks) if self.deep else 1
        for i, (blk, point) in enumerate(zip(blocks[:count], backbone.insertion_points)):
            if tokens:
                backbone.pre_block[str(i)] = PromptTokens(
                    cfg.num_tokens, point.channels, patch_inputs, i > 0, cfg.dropout
                )
            else:
                blk.attn = PromptedWindowAttention(
                    blk.attn, cfg.num_tokens, patch_inputs, cfg.dropout
                )


@register_method("vpt_shallow")
class VPTShallow(VisualPromptTuning):
    """VPT-Shallow: prompts in the first block only."""

    deep = False


@register_method("vpt_deep")
class VPTDeep(VisualPromptTuning):
    """VPT-Deep: fresh prompts in every block."""

    deep = True
