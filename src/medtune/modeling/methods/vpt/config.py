"""Configuration of Visual Prompt Tuning (Jia et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import MethodConfig


@dataclass
class VPTConfig(MethodConfig):
    """VPT options (10 tokens reproduce the paper's ViT counts and Swin VPT-Deep)."""

    num_tokens: int = 10
    """Prompt tokens P per prompted block (ViT: per sequence; Swin: shared by every window)."""
    dropout: float = 0.0
    """Dropout on the prompt tokens during training."""

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise MedtuneInputError(f"vpt.num_tokens: expected >= 1, found {self.num_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise MedtuneInputError(f"vpt.dropout: expected in [0, 1), found {self.dropout}")
