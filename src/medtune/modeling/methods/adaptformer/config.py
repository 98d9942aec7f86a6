"""Configuration of AdaptFormer (Chen et al., 2022): a scaled bottleneck beside each MLP."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import Activation, MethodConfig


@dataclass
class AdaptFormerConfig(MethodConfig):
    """AdaptFormer options (defaults reproduce the paper's counts: bottleneck 64, fixed scale)."""

    bottleneck: int = 64
    """Bottleneck width of every adapter (whatever the block width)."""
    scale: float = 0.1
    """Factor s on the adapter branch: MLP(x) + s * adapter(x) (AdaptFormer uses 0.1)."""
    learnable_scale: bool = False
    """Train s as one extra parameter per block (the paper's counts use a fixed s)."""
    act: Activation = "relu"
    """Non-linearity of the bottleneck: relu (AdaptFormer), gelu, silu, none."""

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise MedtuneInputError(
                f"adaptformer.bottleneck: expected >= 1, found {self.bottleneck}"
            )
        if not self.scale == self.scale:  # NaN
            raise MedtuneInputError("adaptformer.scale: expected a number, found NaN")
