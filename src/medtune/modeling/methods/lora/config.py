"""Configuration of LoRA (Hu et al., 2022) on the attention projections, through peft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import MethodConfig

Target = Literal["qkv", "proj"]
TARGETS: tuple[Target, ...] = get_args(Target)


@dataclass
class LoRAConfig(MethodConfig):
    """LoRA options (passed to `peft.LoraConfig`)."""

    r: int = 8
    """Rank of the update B A (A: r x in, B: out x r; B starts at zero)."""
    alpha: float = 16.0
    """Scaling numerator: the update is (alpha / r) B A."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input during training."""
    targets: tuple[Target, ...] = ("qkv",)
    """Attention projections to adapt: `qkv` (fused query/key/value), `proj` (output)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise MedtuneInputError(f"lora.r: expected >= 1, found {self.r}")
        if self.alpha <= 0:
            raise MedtuneInputError(f"lora.alpha: expected > 0, found {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise MedtuneInputError(f"lora.dropout: expected in [0, 1), found {self.dropout}")
        self.targets = tuple(self.targets)
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise MedtuneInputError(
                f"lora.targets: expected distinct values among {', '.join(TARGETS)}, found {list(self.targets)}"
            )
