"""How whole-volume inference runs: `InferenceOptions`, shared by predict, evaluate and ensembles.

Every field left at None keeps the model's own setting (the training crop as window, the run's
overlap) or an automatic choice:

- `overlap`: sliding-window overlap in [0, 1) (default: the run's, paper 2/3).
- `sw_batch_size`: windows per model call (default: about `AUTO_VOXELS` voxels per call,
  2^19 on CUDA, 2^17 on the CPU).
- `window`: `(d, h, w)`; a window deeper than the training crop needs the Med-Adapter
  `resample` depth filter (with `fixed` it is refused, in one line, on a trial window).
- `precision`: `fp32` or `bf16` (autocast; softmax and stitching stay fp32); default bf16 on
  CUDA, fp32 on CPU.
- `fast`: `FAST` below: overlap 0.25, window depth doubled (when the model accepts it), bf16 on
  CUDA; fields given explicitly win over it.
- `fuse`: fold BatchNorm into convs on a copy of the model (checked on a trial window; exact
  to 1e-5), default on; on the CPU that copy's 2D convs also get channels-last weights
  (`medtune.modeling.layout`, same values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from medtune.core.errors import MedtuneInputError

if TYPE_CHECKING:
    from medtune.inference.predictor import Predictor

PRECISIONS = ("fp32", "bf16")
AUTO_VOXELS = {"cuda": 2**19, "cpu": 2**17}
"""Target voxels per model call of the automatic `sw_batch_size`, by device type: a GPU is fed
8 windows of 16x64x64 at a time; a CPU 2, measured fastest on this project's CPU (the
demo's model on a 4x32x240x240 volume, 2 cores: 1 window per call 15.6-17.1 s, 2: 12.9-14.7,
4: 17.9, 8: 21.7; docs/inference.md). Other device types take the CPU's."""
AUTO_MAX_BATCH = 32
FAST_OVERLAP = 0.25
FAST_DEPTH_FACTOR = 2
"""`--fast`: overlap 0.25 and a window FAST_DEPTH_FACTOR x deeper than the training crop."""


@dataclass
class InferenceOptions:
    """Sliding-window settings of a prediction (see module doc); None: the model's / automatic."""

    overlap: float | None = None
    sw_batch_size: int | None = None
    window: tuple[int, int, int] | None = None
    precision: str | None = None
    fast: bool = False
    fuse: bool = True

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0.0 <= float(self.overlap) < 1.0:
            raise MedtuneInputError(
                f"--overlap: expected a fraction in [0, 1), found {self.overlap}"
            )
        if self.sw_batch_size is not None and int(self.sw_batch_size) < 1:
            raise MedtuneInputError(
                f"--sw-batch-size: expected a positive number of windows, found {self.sw_batch_size}"
            )
        if self.window is not None:
            win = tuple(int(v) for v in self.window)
            if len(win) != 3 or min(win) < 1:
                raise MedtuneInputError(
                    f"--window: expected 3 positive ints D H W, found {tuple(self.window)}"
                )
            self.window = win  # type: ignore[assignment]
        if self.precision is not None and self.precision not in PRECISIONS:
            raise MedtuneInputError(
                f"--precision: expected one of {', '.join(PRECISIONS)}, found {self.precision!r}"
            )


def auto_sw_batch_size(window: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Windows per call so that a call holds about `AUTO_VOXELS[device type]` voxels
    (1..AUTO_MAX_BATCH)."""
    kind = torch.device(device).type
    target = AUTO_VOXELS.get(kind, AUTO_VOXELS["cpu"])
    voxels = max(1, window[0] * window[1] * window[2])
    return max(1, min(AUTO_MAX_BATCH, target // voxels))


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` (None -> bf16 on CUDA, fp32 on CPU); None for fp32."""
    name = precision or ("bf16" if device.type == "cuda" else "fp32")
    return torch.bfloat16 if name == "bf16" else None


def _trial_input(predictor: Predictor, window: tuple[int, ...]) -> torch.Tensor:
    """One zero-mean random window `(1, C, d, h, w)` on the predictor's device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, predictor.props.num_channels, *window), generator=gen)
    return x.to(predictor.device)


def _trial(predictor: Predictor, window: tuple[int, int, int], what: str) -> torch.Tensor:
    """`_trial_input` through the model; a refusal names the window."""
    x = _trial_input(predictor, window)
    try:
        with torch.inference_mode():
            predictor.model(x)
    except Exception as exc:  # the model's own message says why the size does not fit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedtuneInputError(
            f"{what} {' '.join(map(str, window))}: expected a window the model accepts "
            f"(training crop {' '.join(map(str, predictor.window))}), found: {first}"
        ) from exc
    return x


def apply_options(predictor: Predictor, options: InferenceOptions | None) -> Predictor:
    """Set `predictor`'s window, overlap, batch, precision and (fused) model from `options`,
    in place; returns it. A window the model refuses raises `MedtuneInputError` (one line)."""
    opts = options or InferenceOptions()
    train_window = tuple(predictor.window)
    window = opts.window
    if window is not None and tuple(window) != train_window:
        _trial(predictor, window, "--window")
    elif window is None and opts.fast:
        deeper = (train_window[0] * FAST_DEPTH_FACTOR, *train_window[1:])
        try:
            _trial(predictor, deeper, "--fast window")
            window = deeper
        except MedtuneInputError:  # e.g. a `fixed` depth filter: keep the training depth
            window = train_window
    predictor.window = tuple(window or train_window)  # type: ignore[assignment]
    if opts.overlap is not None:
        predictor.overlap = float(opts.overlap)
    elif opts.fast:
        predictor.overlap = FAST_OVERLAP
    if opts.sw_batch_size is not None:
        predictor.sw_batch_size = int(opts.sw_batch_size)
    else:
        predictor.sw_batch_size = auto_sw_batch_size(predictor.window, predictor.device)
    precision = opts.precision
    predictor.autocast = autocast_dtype(precision, predictor.device)
    if opts.fuse and isinstance(predictor.model, torch.nn.Module):
        from medtune.inference.fuse import checked_fuse

        # the window is the training crop or one `_trial` above accepted: no third forward
        trial = _trial_input(predictor, predictor.window)
        on_cpu = torch.device(predictor.device).type == "cpu"
        predictor.model, predictor.fuse_note = checked_fuse(
            predictor.model, trial, channels_last=on_cpu
        )
    return predictor
