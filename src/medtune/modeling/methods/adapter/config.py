"""Configuration of the sequential bottleneck adapter (Houlsby et al., 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.adapter.layer import check_act
from medtune.modeling.methods.base import MethodConfig

POSITIONS = ("attn", "mlp")


@dataclass
class AdapterConfig(MethodConfig):
    """Sequential adapter options (defaults reproduce the paper's counts: d/8, two per block)."""

    reduction: int = 8
    """Bottleneck width = block width // reduction (ViT-B: 768 // 8 = 96)."""
    act: str = "gelu"
    """Non-linearity between the down- and up-projection: gelu, relu, silu, none."""
    positions: tuple[str, ...] = POSITIONS
    """Sub-blocks followed by an adapter: `attn` (after attention), `mlp` (after the MLP)."""

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise MedtuneInputError(f"adapter.reduction: expected >= 1, found {self.reduction}")
        check_act("adapter.act", self.act)
        self.positions = tuple(self.positions)
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions or len(set(self.positions)) != len(self.positions):
            raise MedtuneInputError(
                f"adapter.positions: expected distinct values among {', '.join(POSITIONS)}, found {list(self.positions)}"
            )
