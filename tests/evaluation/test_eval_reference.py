"""Surface Dice and HD95 against the reference implementations users cite.

- NSD against DeepMind's `surface-distance` (Nikolov et al. 2021), the package that defines it;
- HD95 `pooled` against `medpy.metric.hd95` (the Med-Tuning paper's and its release's);
- HD95 `directed` against a reference written here with scipy distance transforms.

Shapes are analytic solids voxelised at thick-slice spacing 0.8 x 0.8 x 3 mm (and 1 mm
isotropic for the spheres): shifted spheres, an ellipsoid against a rotated one, a thin oblique
tube, and shapes cut by the image border.
"""

from __future__ import annotations

import numpy as np
import pytest
import surface_distance
import torch
from medpy.metric.binary import hd95 as medpy_hd95
from scipy import ndimage

from medtune.evaluation.metrics import compute_case_metrics

THICK = (0.8, 0.8, 3.0)
SHAPE = (56, 56, 18)  # 44.8 x 44.8 x 54 mm


def _coords(shape, spacing):
    """Voxel-centre coordinates in mm, each `(D, H, W)`."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def ellipsoid(shape, spacing, centre_mm, radii_mm, angle=0.0):
    """Solid ellipsoid, rotated by `angle` (radians) about the last axis."""
    z, y, x = (c - c0 for c, c0 in zip(_coords(shape, spacing), centre_mm))
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * z - sin * y, sin * z + cos * y
    return (u / radii_mm[0]) ** 2 + (v / radii_mm[1]) ** 2 + (x / radii_mm[2]) ** 2 <= 1.0


def tube(shape, spacing, point_mm, direction, radius_mm):
    """Solid infinite cylinder through `point_mm` along `direction`, cut by the image box."""
    rel = np.stack([c - p for c, p in zip(_coords(shape, spacing), point_mm)], axis=-1)
    axis = np.asarray(direction, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    along = rel @ axis
    radial = rel - along[..., None] * axis
    return (radial**2).sum(-1) <= radius_mm**2


def _cases():
    s = THICK
    return {
        "spheres_shifted": (
            ellipsoid(SHAPE, s, (22.0, 22.0, 27.0), (12, 12, 12)),
            ellipsoid(SHAPE, s, (23.7, 21.4, 31.0), (12, 12, 12)),
            s,
        ),
        "spheres_1mm": (
            ellipsoid((40, 40, 40), (1, 1, 1), (19.5, 20, 20), (12, 12, 12)),
            ellipsoid((40, 40, 40), (1, 1, 1), (21.3, 20.6, 19.2), (12, 12, 12)),
            (1.0, 1.0, 1.0),
        ),
        "ellipsoid": (
            ellipsoid(SHAPE, s, (22.0, 22.0, 27.0), (16, 9, 20)),
            ellipsoid(SHAPE, s, (22.5, 21.0, 28.5), (15, 10, 18), angle=0.3),
            s,
        ),
        "thin_tube": (  # 1.3 mm radius: under one slice thick, ~3 voxels across in-plane
            tube(SHAPE, s, (22.0, 22.0, 27.0), (0.2, 1.0, 0.5), 1.3),
            tube(SHAPE, s, (22.6, 21.8, 27.0), (0.25, 1.0, 0.45), 1.5),
            s,
        ),
        "cut_by_border": (  # both solids run out of the image on three sides
            ellipsoid(SHAPE, s, (1.0, 40.0, 50.0), (14, 12, 15)),
            ellipsoid(SHAPE, s, (-1.5, 41.0, 47.0), (14, 13, 16)),
            s,
        ),
    }


CASES = _cases()


def test_cases_are_what_they_say():
    for name, (gt, pred, _) in CASES.items():
        assert gt.sum() > 50 and pred.sum() > 50, name
        assert 0.1 < (gt & pred).sum() / gt.sum() < 0.99, name  # overlapping, not identical
    gt, pred, _ = CASES["cut_by_border"]
    for m in (gt, pred):
        assert m[0].any() and m[:, -1].any() and m[:, :, -1].any()
    gt, _, _ = CASES["thin_tube"]
    assert gt[:, :, 9].sum() < 40  # a few voxels across in one slice


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("tolerance", [1.0, 2.0])
def test_nsd_matches_deepmind_surface_distance(name, tolerance):
    # Tolerances away from ties: squared surface distances are 0.64 (a^2 + b^2) + 9 c^2 mm^2 at
    # 0.8 x 0.8 x 3 mm (integers a, b, c), never 1 or 4; at 1 mm they are integers, so 1.5 and
    # 2.5 mm are used there. (At an exact tie float rounding decides, in both implementations.)
    gt, pred, spacing = CASES[name]
    if spacing == (1.0, 1.0, 1.0):
        tolerance += 0.5  # 1.5 and 2.5 mm: no lattice distance sqrt(k) equals them
    ref = surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(gt, pred, spacing), tolerance
    )
    got = compute_case_metrics(pred, gt, {"fg": [1]}, spacing, tolerance)["fg"]["nsd"]
    assert got == pytest.approx(ref, abs=1e-3)


def test_nsd_is_not_the_boundary_voxel_count_on_thick_slices():
    # the definition matters: counting boundary voxels differs from the reference here
    from monai.metrics import compute_surface_dice

    gt, pred, spacing = CASES["ellipsoid"]
    ref = surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(gt, pred, spacing), 1.0
    )
    counted = compute_surface_dice(
        *(torch.from_numpy(m.astype(np.float32))[None, None] for m in (pred, gt)),
        [1.0],
        include_background=True,
        spacing=list(spacing),
    ).item()
    got = compute_case_metrics(pred, gt, {"fg": [1]}, spacing, 1.0)["fg"]["nsd"]
    assert abs(counted - ref) > 0.02
    assert abs(got - ref) < 1e-3


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a 6-neighbour outside it (outside the image counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each boundary voxel of `a` to the nearest boundary voxel of `b`."""
    return ndimage.distance_transform_edt(~_boundary(b), sampling=spacing)[_boundary(a)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hd95_directed_matches_a_scipy_reference(name):
    gt, pred, spacing = CASES[name]
    d_pg = _directed_distances(pred, gt, spacing)
    d_gp = _directed_distances(gt, pred, spacing)
    ref = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    got = compute_case_metrics(pred, gt, {"fg": [1]}, spacing)["fg"]["hd95"]
    assert got == pytest.approx(ref, abs=1e-6)
    explicit = compute_case_metrics(pred, gt, {"fg": [1]}, spacing, hd95="directed")["fg"]
    assert explicit["hd95"] == got


@pytest.mark.parametrize("name", sorted(CASES))
def test_hd95_pooled_matches_medpy(name):
    gt, pred, spacing = CASES[name]
    ref = medpy_hd95(pred, gt, voxelspacing=spacing, connectivity=1)
    got = compute_case_metrics(pred, gt, {"fg": [1]}, spacing, hd95="pooled")["fg"]["hd95"]
    assert got == pytest.approx(ref, abs=1e-6)


def test_pooled_and_directed_differ_when_one_side_has_outliers():
    # a prediction that is the reference plus a far blob: only 1 direction sees the blob, so
    # pooling both directions dilutes it and the directed maximum does not
    gt = ellipsoid(SHAPE, THICK, (22.0, 22.0, 27.0), (10, 10, 12))
    pred = gt | ellipsoid(SHAPE, THICK, (40.0, 40.0, 45.0), (3, 3, 4))
    directed = compute_case_metrics(pred, gt, {"fg": [1]}, THICK)["fg"]["hd95"]
    pooled = compute_case_metrics(pred, gt, {"fg": [1]}, THICK, hd95="pooled")["fg"]["hd95"]
    assert pooled == pytest.approx(medpy_hd95(pred, gt, voxelspacing=THICK), abs=1e-6)
    assert directed > pooled + 5.0


def test_empty_mask_policy_is_the_same_for_both_hd95_definitions():
    gt = ellipsoid(SHAPE, THICK, (22.0, 22.0, 27.0), (10, 10, 12)).astype(np.uint8)
    empty = np.zeros_like(gt)
    for hd95 in ("directed", "pooled"):
        one = compute_case_metrics(empty, gt, {"fg": [1]}, THICK, hd95=hd95)["fg"]
        both = compute_case_metrics(empty, empty, {"fg": [1]}, THICK, hd95=hd95)["fg"]
        diag = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, THICK))))
        assert one == {"dice": 0.0, "hd95": pytest.approx(diag), "nsd": 0.0}
        assert both == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
