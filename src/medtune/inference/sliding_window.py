"""Whole-volume inference: MONAI sliding windows, optional 8-way flip TTA, CPU stitching.

Softmax is applied to every window's logits *before* stitching, so the stitched volume is an
average of softmax probabilities wherever windows overlap (as in the authors' release, whose
model ends in a softmax, and nnU-Net). With ``tta="flip8"`` every window is also run under
the 8 combinations of flips of its three spatial axes; each output is flipped back, softmaxed
and the 8 are averaged, before stitching: the paper's "averaged softmax". Flipping per window
(as nnU-Net mirrors per patch) keeps one stitching buffer instead of eight.

Memory: the input volume and the stitched output stay on ``stitch_device`` (the CPU by
default); only ``sw_batch_size`` windows at a time go to ``device``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from medtune.core.errors import MedtuneInputError

DEFAULT_OVERLAP = 2 / 3
"""The paper's sliding-window overlap (a stride of 1/3 window); training and inference default."""

TTA_MODES = ("none", "flip8")
"""Accepted values of `predict_volume`'s `tta`."""

_SPATIAL = (2, 3, 4)  # spatial dims of a (B, K, d, h, w) window batch
_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    dims for n in range(4) for dims in itertools.combinations(_SPATIAL, n)
)


def _check_args(
    image: torch.Tensor, window: Sequence[int], overlap: float, tta: str, sw_batch_size: int
) -> tuple[int, ...]:
    if image.ndim != 4:
        raise MedtuneInputError(f"image: expected (C, D, H, W), found shape {tuple(image.shape)}")
    win = tuple(int(w) for w in window)
    if len(win) != 3 or min(win) < 1:
        raise MedtuneInputError(
            f"window: expected 3 positive ints (d, h, w), found {tuple(window)}"
        )
    if not 0.0 <= overlap < 1.0:
        raise MedtuneInputError(f"overlap: expected a fraction in [0, 1), found {overlap}")
    if tta not in TTA_MODES:
        raise MedtuneInputError(f"tta: expected one of {', '.join(TTA_MODES)}, found {tta!r}")
    if sw_batch_size < 1:
        raise MedtuneInputError(f"sw_batch_size: expected >= 1, found {sw_batch_size}")
    return win


def predict_volume(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor | np.ndarray,
    window: Sequence[int],
    overlap: float = DEFAULT_OVERLAP,
    tta: str = "none",
    sw_batch_size: int = 1,
    device: str | torch.device = "cpu",
    stitch_device: str | torch.device = "cpu",
    num_classes: int | None = None,
    autocast: torch.dtype | None = None,
    blend: str = "constant",
    progress: bool = False,
) -> torch.Tensor:
    """Class probabilities of a whole volume by sliding-window inference.

    Args:
        model: callable mapping windows `(B, C, d, h, w)` to logits `(B, K, d, h, w)`; an
            `nn.Module` is put in eval mode for the call and its mode restored afterwards.
        image: the volume `(C, D, H, W)`, on the CPU (or on `stitch_device`).
        window: window size `(d, h, w)`, normally the training crop; a volume smaller than
            the window is padded (by MONAI) and the result cropped back.
        overlap: fraction of overlap between neighbouring windows; the paper's stride of 1/3
            window is ``2/3``.
        tta: ``"none"`` or ``"flip8"`` (mean softmax over the 8 flip combinations).
        sw_batch_size: windows per model call.
        device: where the model runs (e.g. ``"cuda"``).
        stitch_device: where the volume and the stitched probabilities live.
        num_classes: when given, the model's output channel count K is checked against it.
        autocast: e.g. ``torch.bfloat16`` to run the model under autocast on `device`;
            softmax and stitching stay in float32.
        blend: MONAI blending of overlapping windows, ``"constant"`` (plain mean) or
            ``"gaussian"``.
        progress: show MONAI's progress bar over windows.

    Returns:
        Probabilities `(K, D, H, W)`, float32, on the CPU; they sum to 1 over K.
    """
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(image)
    win = _check_args(x, window, overlap, tta, sw_batch_size)
    if blend not in ("constant", "gaussian"):
        raise MedtuneInputError(f"blend: expected constant or gaussian, found {blend!r}")
    if not torch.is_floating_point(x):
        x = x.float()
    sw_device = torch.device(device)
    flips = _FLIPS if tta == "flip8" else ((),)

    def window_probs(batch: torch.Tensor) -> torch.Tensor:
        """Softmax `(B, K, d, h, w)` of a window batch, averaged over the TTA flips."""
        total = None
        for dims in flips:
            inp = torch.flip(batch, dims) if dims else batch
            ctx = (
                torch.autocast(device_type=sw_device.type, dtype=autocast)
                if autocast is not None
                else nullcontext()
            )
            with ctx:
                logits = model(inp)
            if (
                not isinstance(logits, torch.Tensor)
                or logits.ndim != 5
                or logits.shape[0] != inp.shape[0]
                or logits.shape[2:] != inp.shape[2:]
            ):
                found = (
                    tuple(logits.shape)
                    if isinstance(logits, torch.Tensor)
                    else type(logits).__name__
                )
                raise MedtuneInputError(
                    f"model output: expected logits (B, K, {', '.join(map(str, inp.shape[2:]))}) "
                    f"for a window batch {tuple(inp.shape)}, found {found}"
                )
            if num_classes is not None and logits.shape[1] != num_classes:
                raise MedtuneInputError(
                    f"model output: expected {num_classes} classes, found {logits.shape[1]}"
                )
            probs = torch.softmax(logits.float(), dim=1)
            if dims:
                probs = torch.flip(probs, dims)
            total = probs if total is None else total + probs
        return total / len(flips)

    was_training = getattr(model, "training", None)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            out = sliding_window_inference(
                x[None],
                roi_size=win,
                sw_batch_size=sw_batch_size,
                predictor=window_probs,
                overlap=overlap,
                mode=blend,
                sw_device=sw_device,
                device=torch.device(stitch_device),
                progress=progress,
            )
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()
    out = torch.as_tensor(out)[0]
    return out.to(device="cpu", dtype=torch.float32).as_subclass(torch.Tensor)


def probs_to_labels(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Most probable class per voxel: probabilities `(K, D, H, W)` -> labels `(D, H, W)`, uint8
    (class indices 0..K-1, i.e. in the model's label order)."""
    p = torch.as_tensor(probs)
    if p.ndim != 4:
        raise MedtuneInputError(f"probs: expected (K, D, H, W), found shape {tuple(p.shape)}")
    if p.shape[0] > 256:
        raise MedtuneInputError(
            f"probs: expected at most 256 classes for uint8 labels, found {p.shape[0]}"
        )
    return p.argmax(dim=0).to(torch.uint8).cpu().numpy()
