"""Configuration of the ST-Adapter moved to the slice axis (Pan et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import Activation, MethodConfig


@dataclass
class STAdapterConfig(MethodConfig):
    """ST-Adapter options (defaults reproduce the paper's counts: d/2, kernel 3 across slices)."""

    reduction: int = 2
    """Bottleneck width = block width // reduction (ViT-B: 384)."""
    kernel: int = 3
    """Depthwise conv kernel across slices, (k, 1, 1), with bias; odd."""
    act: Activation = "gelu"
    """Non-linearity after the depthwise conv: gelu, relu, silu, none."""

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise MedtuneInputError(f"st_adapter.reduction: expected >= 1, found {self.reduction}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise MedtuneInputError(
                f"st_adapter.kernel: expected an odd size >= 1, found {self.kernel}"
            )
