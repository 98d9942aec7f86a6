"""Head-only tuning: the frozen backbone, a trained decoder (and the paper's encoder extras)."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.modeling.methods.base import MethodConfig, TuningMethod, register_method


@dataclass
class HeadConfig(MethodConfig):
    """Head-only tuning has no options."""


@register_method("head")
class HeadOnly(TuningMethod):
    """Freeze the backbone; train the decoder plus the encoder-side extras the paper tunes
    (ViT: position embedding and final norm; Swin: final norm; CNN: nothing)."""

    config_cls = HeadConfig
