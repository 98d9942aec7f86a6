"""Configuration of the sequential bottleneck adapter (Houlsby et al., 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import Activation, MethodConfig

Position = Literal["attn", "mlp"]
POSITIONS: tuple[Position, ...] = get_args(Position)


@dataclass
class AdapterConfig(MethodConfig):
    """Sequential adapter options (defaults reproduce the paper's counts: d/8, two per block)."""

    reduction: int = 8
    """Bottleneck width = block width // reduction (ViT-B: 768 // 8 = 96)."""
    act: Activation = "gelu"
    """Non-linearity between the down- and up-projection: gelu, relu, silu, none."""
    positions: tuple[Position, ...] = POSITIONS
    """Sub-blocks followed by an adapter: `attn` (after attention), `mlp` (after the MLP)."""

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise MedtuneInputError(f"adapter.reduction: expected >= 1, found {self.reduction}")
        self.positions = tuple(self.positions)
        if not self.positions or len(set(self.positions)) != len(self.positions):
            raise MedtuneInputError(
                f"adapter.positions: expected distinct values among {', '.join(POSITIONS)}, found {list(self.positions)}"
            )
