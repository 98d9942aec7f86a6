"""Per-case segmentation metrics per region: Dice, HD95 (mm) and normalised surface Dice.

A *region* is a named union of label values, evaluated as one binary mask, e.g. BraTS
``{"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}`` (ET is 3 from BraTS 2023 on) or KiTS
``{"kidney": [1, 2], "tumour": [2]}``.

Metrics (``pred`` and ``gt`` are label maps ``(D, H, W)``; ``spacing`` is mm per axis):

- ``dice``: ``2 |P & G| / (|P| + |G|)``, counted in voxels.
- ``hd95`` (mm), on the boundary voxels of P and G (voxels of the mask with a 6-neighbour
  outside it, voxels on the image border included; MONAI `get_mask_edges`), with the distances
  from each boundary voxel centre to the nearest centre of the other boundary (float64), in one
  of two definitions (`HD95_MODES`):

  - ``directed`` (default; MONAI ``compute_hausdorff_distance(percentile=95)``, BraTS): the
    larger of the two directed 95th percentiles, P -> G and G -> P;
  - ``pooled`` (``medpy.metric.hd95``, used by the Med-Tuning paper and its release): the 95th
    percentile of the distances of both directions pooled into one set.

  Percentiles interpolate linearly (numpy's default).
- ``nsd``: the surface Dice of Nikolov et al. 2021 (DeepMind ``surface-distance``), by MONAI
  ``compute_surface_dice(use_subvoxels=True)``: the surfaces are made of surface elements
  (marching-cubes-like faces between voxel centres, weighted by their area in mm^2), and NSD is
  the area of both surfaces lying within ``nsd_tolerance_mm`` of the other surface divided by
  the total area of both.

Empty-mask policy (no case is ever dropped, and no NaN or inf is returned):

=====================  ======  ==========================  =====
case                   dice    hd95                        nsd
=====================  ======  ==========================  =====
both P and G empty     1.0     0.0                         1.0
exactly one empty      0.0     image diagonal in mm        0.0
=====================  ======  ==========================  =====

The image diagonal is ``sqrt(sum((n_i * s_i) ** 2))`` over the three axes (`image_diagonal_mm`),
the largest distance the volume can hold: 373.13 mm for BraTS' 240 x 240 x 155 grid at 1 mm,
the value the BraTS challenge uses for a missed or hallucinated region. Empty masks are decided
here, before MONAI is called (MONAI answers NaN or inf for them). The policy is the same for
both HD95 definitions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medtune.core.errors import MedtuneInputError

METRICS = ("dice", "hd95", "nsd")
"""Metric names reported per region, in report order."""

HD95_MODES = ("directed", "pooled")
"""HD95 definitions: max of the two directed 95th percentiles (MONAI, BraTS; the default), or
the 95th percentile of both directions pooled (medpy, the Med-Tuning paper)."""

ArrayLike = np.ndarray | torch.Tensor


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a grid of `shape` voxels of `spacing` mm: the HD95 of a
    case where exactly one of prediction and reference is empty."""
    if len(shape) != len(spacing):
        raise MedtuneInputError(
            f"image_diagonal_mm: shape {tuple(shape)} and spacing {tuple(spacing)} have different lengths"
        )
    return float(math.sqrt(sum((int(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _as_label_map(arr: ArrayLike, name: str) -> np.ndarray:
    """`arr` as an integer numpy array; whole-valued floats are accepted (NIfTI label files)."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise MedtuneInputError(f"{name}: expected a label map (D, H, W), found shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise MedtuneInputError(
                f"{name}: expected integer labels, found non-integer values (dtype {arr.dtype})"
            )
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise MedtuneInputError(f"{name}: expected integer labels, found dtype {arr.dtype}")
    return arr


def _check_regions(
    regions: Mapping[str, Sequence[int]], known_labels: Sequence[int] | None
) -> dict[str, list[int]]:
    if not regions:
        raise MedtuneInputError("regions: expected at least one region name -> labels, found none")
    known = None if known_labels is None else {int(v) for v in known_labels}
    checked: dict[str, list[int]] = {}
    for name, labels in regions.items():
        if "/" in str(name):
            raise MedtuneInputError(
                f"region name {name!r}: expected no '/' (used in report columns)"
            )
        labels = [labels] if isinstance(labels, int | np.integer) else list(labels)
        if not labels:
            raise MedtuneInputError(f"region {name!r}: expected at least one label, found none")
        for v in labels:
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise MedtuneInputError(
                    f"region {name!r}: expected foreground labels (integers >= 1), found {v!r}"
                )
            if known is not None and int(v) not in known:
                raise MedtuneInputError(
                    f"region {name!r}: unknown label {v}; the dataset's labels are {sorted(known)}"
                )
        checked[str(name)] = [int(v) for v in labels]
    return checked


def _check_values(arr: np.ndarray, name: str, known_labels: Sequence[int]) -> None:
    allowed = {0, *(int(v) for v in known_labels)}
    present = set(np.unique(arr).tolist())
    unknown = sorted(present - allowed)
    if unknown:
        raise MedtuneInputError(
            f"{name}: found label values {unknown} outside the dataset's labels {sorted(allowed)}"
        )


def _crop_to_union(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus one voxel, clipped to the image.

    MONAI crops the same way internally, but only after converting the whole volume to float;
    distances are translation invariant and voxels outside the crop are background either way,
    and the image border still counts as outside (MONAI pads the crop with background).
    """
    union = p | g
    box = []
    for axis in range(3):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    return np.ascontiguousarray(p[tuple(box)]), np.ascontiguousarray(g[tuple(box)])


def boundary_distances(
    p: np.ndarray, g: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm, float64) from each boundary voxel of P to the boundary of G, and from
    each boundary voxel of G to the boundary of P, for two non-empty boolean masks `(D, H, W)`.

    Boundaries by MONAI `get_mask_edges` (the mask minus its erosion); nearest neighbours by a
    scipy KD-tree, as MONAI does on the CPU, but kept in float64 (MONAI rounds to float32).
    """
    from monai.metrics.utils import get_mask_edges
    from scipy.spatial import cKDTree

    edges_p, edges_g = get_mask_edges(p, g, crop=True)
    scale = np.asarray(spacing, dtype=np.float64)
    pts_p = np.argwhere(edges_p).astype(np.float64) * scale
    pts_g = np.argwhere(edges_g).astype(np.float64) * scale
    d_pg = cKDTree(pts_g).query(pts_p, k=1)[0]
    d_gp = cKDTree(pts_p).query(pts_g, k=1)[0]
    return np.asarray(d_pg, dtype=np.float64), np.asarray(d_gp, dtype=np.float64)


def hd95_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, mode: str = "directed") -> float:
    """HD95 (mm) of the two directed boundary distance sets, in the definition `mode`."""
    if mode == "directed":
        return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
    if mode == "pooled":
        return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    raise MedtuneInputError(f"hd95: expected one of {', '.join(HD95_MODES)}, found {mode!r}")


def _surface_metrics(
    p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...], tolerance: float, hd95: str
) -> tuple[float, float]:
    """HD95 (mm, definition `hd95`) and NSD of two non-empty boolean masks `(D, H, W)`."""
    from monai.metrics import compute_surface_dice

    p, g = _crop_to_union(p, g)
    hd = hd95_from_distances(*boundary_distances(p, g, spacing), mode=hd95)
    yp = torch.from_numpy(p)[None, None].float()
    yg = torch.from_numpy(g)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-mask warnings cannot apply: both are non-empty
        nsd = compute_surface_dice(
            yp, yg, [tolerance], include_background=True, spacing=list(spacing), use_subvoxels=True
        )
    return hd, float(nsd.item())


def dice_score(p: np.ndarray, g: np.ndarray) -> float:
    """Dice of two boolean masks; both empty -> 1, exactly one empty -> 0."""
    n = int(p.sum()) + int(g.sum())
    return 1.0 if n == 0 else 2.0 * int(np.logical_and(p, g).sum()) / n


def region_dice(pred: np.ndarray, gt: np.ndarray, regions: dict[str, list[int]]) -> list[float]:
    """Dice per region (union of labels) of label maps `(D, H, W)`, in `regions` order."""
    return [dice_score(np.isin(pred, labels), np.isin(gt, labels)) for labels in regions.values()]


def compute_case_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 1.0,
    *,
    hd95: str = "directed",
    mean_region: str | None = None,
    known_labels: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice, HD95 (mm) and NSD of every region of one case.

    Args:
        pred: predicted label map `(D, H, W)`.
        gt: reference label map `(D, H, W)`.
        regions: region name -> labels whose union forms the region, e.g. ``{"ET": [4]}``.
        spacing: voxel size in mm along (D, H, W) of the arrays.
        nsd_tolerance_mm: boundary tolerance of the normalised surface Dice, in mm.
        hd95: "directed" (max of the two directed 95th percentiles) or "pooled" (95th
            percentile of both directions together, medpy's `hd95`).
        mean_region: when given (e.g. ``"mean"``, KiTS' "composite"), add a pseudo-region of
            that name holding, for each metric, the mean over the regions of this case.
        known_labels: the dataset's foreground labels; when given, region labels and values
            of `pred` / `gt` outside them (and 0) raise instead of being ignored.

    Returns:
        ``{region: {"dice": float, "hd95": float, "nsd": float}}`` in the order of `regions`,
        then `mean_region`. Empty masks follow the module's policy; values are always finite.
    """
    checked = _check_regions(regions, known_labels)
    if mean_region is not None and mean_region in checked:
        raise MedtuneInputError(f"mean_region {mean_region!r}: already the name of a region")
    p_map = _as_label_map(pred, "pred")
    g_map = _as_label_map(gt, "gt")
    if p_map.shape != g_map.shape:
        raise MedtuneInputError(
            f"pred and gt: expected the same shape, found {p_map.shape} (pred) and {g_map.shape} (gt)"
        )
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_t):
        raise MedtuneInputError(
            f"spacing: expected 3 positive numbers (mm along D, H, W), found {tuple(spacing)}"
        )
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise MedtuneInputError(
            f"nsd_tolerance_mm: expected a number >= 0, found {nsd_tolerance_mm}"
        )
    if hd95 not in HD95_MODES:
        raise MedtuneInputError(f"hd95: expected one of {', '.join(HD95_MODES)}, found {hd95!r}")
    if known_labels is not None:
        _check_values(p_map, "pred", known_labels)
        _check_values(g_map, "gt", known_labels)

    diagonal = image_diagonal_mm(p_map.shape, spacing_t)
    out: dict[str, dict[str, float]] = {}
    for name, labels in checked.items():
        p = np.isin(p_map, labels)
        g = np.isin(g_map, labels)
        n_p, n_g = int(p.sum()), int(g.sum())
        if n_p == 0 and n_g == 0:
            out[name] = {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
        elif n_p == 0 or n_g == 0:
            out[name] = {"dice": 0.0, "hd95": diagonal, "nsd": 0.0}
        else:
            dice = dice_score(p, g)
            hd, nsd = _surface_metrics(p, g, spacing_t, float(nsd_tolerance_mm), hd95)
            out[name] = {"dice": dice, "hd95": hd, "nsd": nsd}
    if mean_region is not None:
        out[mean_region] = {m: float(np.mean([out[r][m] for r in checked])) for m in METRICS}
    return out


def brats_postprocess(
    pred: ArrayLike, et_label: int, replacement_label: int, min_voxels: int = 500
) -> ArrayLike:
    """The paper's BraTS post-processing: when fewer than `min_voxels` voxels are predicted as
    enhancing tumour (`et_label`), relabel them as `replacement_label` (the necrotic /
    non-enhancing core label, 1 in BraTS 2019).

    Args:
        pred: predicted label map, any shape (typically `(D, H, W)`), numpy or torch.

    Returns:
        A new array of the same type, shape and dtype; `pred` is never modified.
    """
    if et_label == replacement_label:
        raise MedtuneInputError(
            f"brats_postprocess: expected different et_label and replacement_label, found {et_label} for both"
        )
    if min_voxels < 0:
        raise MedtuneInputError(f"brats_postprocess: min_voxels must be >= 0, found {min_voxels}")
    out = pred.clone() if isinstance(pred, torch.Tensor) else np.array(pred, copy=True)
    et = out == et_label
    if 0 < int(et.sum()) < min_voxels:
        out[et] = replacement_label
    return out
