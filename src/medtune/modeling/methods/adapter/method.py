"""Sequential bottleneck adapters after the attention and the MLP of every transformer block."""

from __future__ import annotations

from torch import nn

from medtune.modeling.methods.adapter.config import AdapterConfig
from medtune.modeling.methods.adapter.layer import Bottleneck, SequentialAdapter
from medtune.modeling.methods.base import TuningMethod, register_method


@register_method("adapter")
class AdapterTuning(TuningMethod):
    """`blk.attn` and `blk.mlp` of each block are wrapped: output `y -> y + up(act(down(y)))`."""

    config_cls = AdapterConfig
    requires = frozenset({"transformer_blocks", "slices"})
    wrapper_segments = ("wrapped",)
    unsupported_reason = (
        "the adapter follows the attention and MLP sub-blocks of transformer blocks, which CNN "
        "stages do not have; use st_adapter, pro_tuning or med_adapter"
    )

    def insert(self, model: nn.Module) -> None:
        cfg: AdapterConfig = self.config
        for blk, point in zip(model.backbone.transformer_blocks(), model.backbone.insertion_points):
            hidden = max(1, point.channels // cfg.reduction)
            for pos in cfg.positions:
                inner = getattr(blk, pos)
                setattr(
                    blk, pos, SequentialAdapter(inner, Bottleneck(point.channels, hidden, cfg.act))
                )
