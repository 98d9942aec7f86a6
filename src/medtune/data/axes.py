"""The slice axis: which RAS voxel axes become the model's `(D, H, W)`.

Every case is first oriented to RAS (MONAI: `(C, X, Y, Z)`, X left -> right, Y posterior ->
anterior, Z inferior -> superior). The model's D is the slice axis (what a 2D backbone folds
into slices and a Med-Adapter mixes across); H and W are the other two RAS axes, in X, Y, Z
order:

    slice_axis   D   H   W    each 2D slice is
    axial        Z   X   Y    a transverse plane (the paper's, the default)
    coronal      Y   X   Z    a frontal plane
    sagittal     X   Y   Z    a side plane

`auto` picks, once at preprocessing, the axis along which the dataset's median voxel spacing
is coarsest (a thick-slice scan keeps its sharp planes as 2D slices); ties within
`TIE_RTOL` go to axial, then coronal.

This module is the one place that maps between the two orders: the cache, `preprocess_image`
and `restore_to_original` go through `to_model_order` / `to_ras_order` with the axes recorded
in each case's meta (`meta["axes"]`, absent in caches written before the slice axis existed:
axial).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from medtune.core.errors import MedtuneInputError

SliceAxis = Literal["axial", "coronal", "sagittal"]
"""A resolved slice axis (what the cache, the adapter folder and prediction record)."""
SLICE_AXES: tuple[str, ...] = ("axial", "coronal", "sagittal")
SLICE_AXIS_SETTINGS: tuple[str, ...] = (*SLICE_AXES, "auto")
"""What `data.slice_axis` and `medtune preprocess --slice-axis` accept."""
MODEL_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (2, 0, 1),
    "coronal": (1, 0, 2),
    "sagittal": (0, 1, 2),
}
"""Slice axis -> the RAS voxel axis (0 X, 1 Y, 2 Z) of the model's D, H and W."""
AXIAL_AXES = MODEL_AXES["axial"]
TIE_RTOL = 0.01
"""`auto`: spacings within 1 % of the coarsest count as equally coarse."""


def model_axes(slice_axis: str) -> tuple[int, int, int]:
    """The RAS voxel axis of the model's D, H and W for a resolved `slice_axis`."""
    try:
        return MODEL_AXES[slice_axis]
    except KeyError:
        raise MedtuneInputError(
            f"slice axis: expected one of {', '.join(SLICE_AXES)}, found {slice_axis!r}"
        ) from None


def to_model_order(x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """`(..., X, Y, Z)` -> `(..., D, H, W)` (a view; leading axes such as C are kept)."""
    lead = x.ndim - 3
    return x.transpose(*range(lead), *(lead + int(a) for a in axes))


def to_ras_order(x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """`(..., D, H, W)` -> `(..., X, Y, Z)` (a view): the inverse of `to_model_order`."""
    lead = x.ndim - 3
    inverse = np.argsort(np.asarray(axes, dtype=np.int64))
    return x.transpose(*range(lead), *(lead + int(a) for a in inverse))


def model_spacing(spacing_xyz: Sequence[float], axes: Sequence[int]) -> list[float]:
    """Voxel spacing (X, Y, Z) in mm -> (D, H, W)."""
    return [float(spacing_xyz[int(a)]) for a in axes]


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm along X, Y and Z of an image with `affine` once oriented to RAS
    (the voxel axis nearest each world axis, as `nibabel.io_orientation` and MONAI's
    `Orientation` pair them)."""
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    ornt = nib.orientations.io_orientation(affine)
    out = [0.0, 0.0, 0.0]
    for voxel_axis, (world_axis, _) in enumerate(ornt):
        out[int(world_axis)] = float(zooms[voxel_axis])
    return out[0], out[1], out[2]


def median_ras_spacing(files: Iterable[Path]) -> tuple[float, float, float] | None:
    """Median RAS spacing (X, Y, Z) in mm over the headers of `files` (one image per case).
    Files whose header cannot be read or whose affine is singular are left out (preprocessing
    refuses them with one line); None when none is left."""
    found = []
    for f in files:
        try:
            sp = ras_spacing(nib.load(str(f)).affine)
        except Exception:  # noqa: BLE001 - the case's own processing names the problem
            continue
        if all(np.isfinite(sp)) and min(sp) > 0:
            found.append(sp)
    if not found:
        return None
    med = np.median(np.asarray(found), axis=0)
    return float(med[0]), float(med[1]), float(med[2])


def resolve_slice_axis(setting: str, spacing_xyz: Sequence[float] | None) -> SliceAxis:
    """`setting` itself, or for `auto` the axis of the coarsest of `spacing_xyz` (X, Y, Z mm;
    ties within `TIE_RTOL` go to axial, then coronal; no spacing known: axial)."""
    if setting not in SLICE_AXIS_SETTINGS:
        raise MedtuneInputError(
            f"slice axis: expected one of {', '.join(SLICE_AXIS_SETTINGS)}, found {setting!r}"
        )
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if spacing_xyz is None:
        return "axial"
    coarsest = max(float(s) for s in spacing_xyz)
    return next(  # type: ignore[return-value]
        name
        for name in SLICE_AXES  # D along Z, then Y, then X
        if float(spacing_xyz[MODEL_AXES[name][0]]) >= coarsest * (1 - TIE_RTOL)
    )
