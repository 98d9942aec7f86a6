"""Configuration of Pro-tuning (Nie et al., 2022): one prompt block per stage."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import Activation, MethodConfig


@dataclass
class ProTuningConfig(MethodConfig):
    """Pro-tuning options: the prompt block is pointwise -> depthwise k x k -> act -> pointwise."""

    kernel: int = 5
    """Depthwise kernel of the prompt block (k x k, in-slice); odd."""
    act: Activation = "gelu"
    """Non-linearity after the depthwise conv: gelu, relu, silu, none."""
    stages: tuple[int, ...] | None = None
    """Stages that get a prompt block (None: all)."""

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise MedtuneInputError(
                f"pro_tuning.kernel: expected an odd size >= 1, found {self.kernel}"
            )
        if self.stages is not None:
            self.stages = tuple(int(s) for s in self.stages)
