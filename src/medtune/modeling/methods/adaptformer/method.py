"""AdaptFormer: a parallel, scaled bottleneck beside the MLP of every transformer block."""

from __future__ import annotations

from torch import nn

from medtune.modeling.methods.adapter.layer import Bottleneck, ParallelAdapter
from medtune.modeling.methods.adaptformer.config import AdaptFormerConfig
from medtune.modeling.methods.base import TuningMethod, register_method


@register_method("adaptformer")
class AdaptFormer(TuningMethod):
    """`blk.mlp` of each block is wrapped: `z -> mlp(z) + s * up(relu(down(z)))`, `z` the
    normalised MLP input `(N, L, C)` (ViT) or `(N, h, w, C)` (Swin)."""

    config_cls = AdaptFormerConfig
    requires = frozenset({"transformer_blocks", "slices"})
    wrapper_segments = ("wrapped",)
    unsupported_reason = (
        "AdaptFormer runs beside the MLP of transformer blocks, which CNN stages do not have; "
        "use st_adapter, pro_tuning or med_adapter"
    )

    def insert(self, model: nn.Module) -> None:
        cfg: AdaptFormerConfig = self.config
        for blk, point in zip(model.backbone.transformer_blocks(), model.backbone.insertion_points):
            branch = Bottleneck(point.channels, cfg.bottleneck, cfg.act)
            blk.mlp = ParallelAdapter(blk.mlp, branch, cfg.scale, cfg.learnable_scale)
