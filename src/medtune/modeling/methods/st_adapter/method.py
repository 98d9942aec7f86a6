"""ST-Adapter: one slice-mixing bottleneck after every block (CNNs: after every stage)."""

from __future__ import annotations

from torch import nn

from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.st_adapter.config import STAdapterConfig
from medtune.modeling.methods.st_adapter.layer import STAdapter


@register_method("st_adapter")
class STAdapterTuning(TuningMethod):
    """Insert an `STAdapter` in the backbone's `post_block` hook of every insertion point."""

    config_cls = STAdapterConfig
    requires = frozenset({"slices"})

    def insert(self, model: nn.Module) -> None:
        cfg: STAdapterConfig = self.config
        for p in model.backbone.insertion_points:
            hidden = max(1, p.channels // cfg.reduction)
            model.backbone.post_block[str(p.index)] = STAdapter(
                p.channels, hidden, cfg.kernel, cfg.act
            )
