"""Data section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medtune.core.errors import MedtuneInputError


@dataclass
class DataConfig:
    """Where the data is and how training crops are drawn.

    Batches reach the model as `(B, C, D, H, W)`, after canonical RAS orientation, with D along
    the slice axis (`medtune.data.axes`): axial D = Z, H = X, W = Y; coronal D = Y, H = X,
    W = Z; sagittal D = X, H = Y, W = Z.
    """

    root: str | None = None
    """Dataset folder (nnU-Net v2 raw layout or an MSD task); `--data` on the command line."""
    cache: str | None = None
    """Preprocessing cache folder; None: `medtune_cache/<dataset folder name>` beside the dataset."""
    fold: int = 0
    """Cross-validation fold used for validation (0 .. num_folds-1)."""
    num_folds: int = 5
    """Number of folds written to splits_final.json when it does not exist."""
    split_seed: int = 12345
    """Seed of the fold assignment."""
    spacing: tuple[float, float, float] | None = None
    """Target voxel spacing in mm (X, Y, Z) for resampling; None keeps the native spacing."""
    slice_axis: Literal["axial", "coronal", "sagittal", "auto"] = "axial"
    """RAS axis of the model's D (2D backbones' slices); auto: the coarsest median spacing."""
    crop_size: tuple[int, int, int] = (128, 128, 128)
    """Random crop size (D, H, W) in the model's axis order (slice_axis); smaller volumes padded."""
    batch_size: int = 2
    """Crops per device per step."""
    foreground_prob: float = 0.0
    """Probability that a crop is centred on a foreground voxel (0: uniform random crops)."""
    flip_prob: float = 0.5
    """Probability of a flip on each of the three axes."""
    intensity_scale: float = 0.1
    """Per-channel intensity scale drawn from U(1-s, 1+s)."""
    intensity_shift: float = 0.1
    """Per-channel intensity shift drawn from U(-s, s)."""
    num_workers: int = 2
    """Data-loader worker processes."""
    samples_per_epoch: int | None = None
    """Crops per training epoch; None: one crop per training case."""

    def __post_init__(self) -> None:
        self.crop_size = tuple(int(v) for v in self.crop_size)  # type: ignore[assignment]
        if len(self.crop_size) != 3 or min(self.crop_size) < 1:
            raise MedtuneInputError(
                f"data.crop_size: expected 3 positive ints (D, H, W), found {self.crop_size}"
            )
        if self.spacing is not None:
            self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise MedtuneInputError(
                    f"data.spacing: expected 3 positive numbers, found {self.spacing}"
                )
        if not 0 <= self.fold < self.num_folds:
            raise MedtuneInputError(
                f"data.fold: expected 0..{self.num_folds - 1}, found {self.fold}"
            )
        for name in ("foreground_prob", "flip_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise MedtuneInputError(f"data.{name}: expected a probability in [0, 1], found {v}")
        if self.batch_size < 1:
            raise MedtuneInputError(f"data.batch_size: expected >= 1, found {self.batch_size}")
        if self.num_workers < 0:
            raise MedtuneInputError(f"data.num_workers: expected >= 0, found {self.num_workers}")
