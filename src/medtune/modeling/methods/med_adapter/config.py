"""Configuration of the Med-Adapter (the paper's ablation knobs are its fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.base import MethodConfig


@dataclass
class MedAdapterConfig(MethodConfig):
    """Med-Adapter options (defaults reproduce the paper)."""

    alpha: int = 6
    """Reduction ratio: hidden width C' = max(min_hidden, C // alpha)."""
    min_hidden: int = 8
    """Smallest hidden width (matters for narrow CNN stages only)."""
    multiscale: bool = True
    """Multi-scale local branch: depthwise (1,k,k) then (k,1,1) convs + BN + ReLU per kernel."""
    kernels: tuple[int, ...] = (3, 5)
    """Kernel sizes of the multi-scale branch paths."""
    fourier: bool = True
    """Fourier global branch: 3D FFT, learnable depth filter and bias, inverse FFT, magnitude."""
    fusion_conv: bool = True
    """1x1x1 conv after the sum of the branches."""
    inter_stage: bool = True
    """Inter-stage feature interaction in the last adapter of each stage."""
    inter_stage_fusion: Literal["concat", "add", "max"] = "concat"
    """How the aligned previous-stage state joins this stage's: concat (+1x1x1 conv), add, max."""
    stages: tuple[int, ...] | None = None
    """Stages that receive adapters (None: all)."""
    depth_filter: Literal["resample", "fixed"] = "resample"
    """`resample`: the filter is defined on normalised depth frequency and resampled to any
    window depth (identical to `fixed` at train_depth); `fixed`: the release's behaviour, the
    window depth must equal train_depth."""
    train_depth: int | None = None
    """Filter length: the training crop depth (None: taken from data.crop_size)."""

    def __post_init__(self) -> None:
        if self.alpha < 1:
            raise MedtuneInputError(f"med_adapter.alpha: expected >= 1, found {self.alpha}")
        self.kernels = tuple(int(k) for k in self.kernels)
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise MedtuneInputError(
                f"med_adapter.kernels: expected odd positive sizes, found {self.kernels}"
            )
        if self.stages is not None:
            self.stages = tuple(int(s) for s in self.stages)
        if self.train_depth is not None and self.train_depth < 1:
            raise MedtuneInputError(
                f"med_adapter.train_depth: expected >= 1, found {self.train_depth}"
            )
