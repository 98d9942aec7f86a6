"""Full fine-tuning: every parameter of the pre-trained model and the decoder trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medtune.modeling.methods.base import MethodConfig, TuningMethod, register_method


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning has no options."""


@register_method("full")
class FullFineTuning(TuningMethod):
    """Train everything, starting from the pre-trained weights."""

    config_cls = FullConfig

    def trainable_names(self, model: nn.Module) -> set[str]:
        return {n for n, _ in model.named_parameters()}
