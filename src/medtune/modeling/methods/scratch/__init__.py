"""Training from scratch: the same architecture, random initialisation, everything trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medtune.modeling.methods.base import MethodConfig, TuningMethod, register_method


@dataclass
class ScratchConfig(MethodConfig):
    """Training from scratch has no options."""


@register_method("scratch")
class Scratch(TuningMethod):
    """Train everything from random initialisation (no pre-trained weights are loaded)."""

    config_cls = ScratchConfig
    uses_pretrained = False

    def trainable_names(self, model: nn.Module) -> set[str]:
        return {n for n, _ in model.named_parameters()}
