"""Pro-tuning: a prompt block per stage whose prompts are added to the stage's output."""

from __future__ import annotations

from torch import nn

from medtune.modeling.backbones.base import select_stages
from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.pro_tuning.config import ProTuningConfig
from medtune.modeling.methods.pro_tuning.layer import StagePrompt, StashStageInput


@register_method("pro_tuning")
class ProTuning(TuningMethod):
    """Backbones with `pre_block` hooks (ViT, Swin): the prompt block reads the stage input (the
    hook of the stage's first block keeps it) and its prompts are added after the stage's last
    block. Without them (CNNs) no hook sees a stage's input, so the block reads the stage
    output: `y + P(y)`."""

    config_cls = ProTuningConfig
    requires = frozenset({"slices"})

    def insert(self, model: nn.Module) -> None:
        cfg: ProTuningConfig = self.config
        backbone = model.backbone
        stages = select_stages(backbone.insertion_points, cfg.stages, "pro_tuning.stages")
        for s, points in stages.items():
            first, last = points[0], points[-1]
            key = None
            if "pre_block" in backbone.capabilities:
                key = f"pro_tuning.stage{s}"
                backbone.pre_block[str(first.index)] = StashStageInput(key)
            backbone.post_block[str(last.index)] = StagePrompt(
                last.channels, cfg.kernel, cfg.act, key
            )
