"""Metrics on hand-made cases: shifted spheres (closed forms), empty masks, post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medtune.core.errors import MedtuneInputError
from medtune.evaluation.metrics import (
    brats_postprocess,
    compute_case_metrics,
    image_diagonal_mm,
)

BRATS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}


def ball(shape, center_vox, radius_mm, spacing=(1.0, 1.0, 1.0)):
    """uint8 mask of the voxels whose centres lie within `radius_mm` of `center_vox`."""
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, center_vox, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (zz**2 + yy**2 + xx**2 <= radius_mm**2).astype(np.uint8)


def shifted_pair(radius_mm, shift_vox, axis, spacing=(1.0, 1.0, 1.0)):
    """A ball (reference) and the same ball moved by `shift_vox` voxels along `axis`."""
    shape = [int(2 * radius_mm / s) + 8 for s in spacing]
    shape[axis] += shift_vox
    center = [n / 2 for n in shape]
    center[axis] -= shift_vox / 2
    gt = ball(shape, center, radius_mm, spacing)
    moved = list(center)
    moved[axis] += shift_vox
    pred = ball(shape, moved, radius_mm, spacing)
    return pred, gt


def dice_two_spheres(r, d):
    """Dice of two spheres of radius r whose centres are d apart (lens volume / sphere volume)."""
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    return lens / (4 / 3 * math.pi * r**3)


# For points on a sphere of radius r, the distance to the same sphere shifted by d is uniformly
# distributed on [0, d] (cos(theta) is uniform on a sphere and the distance is linear in it
# where it matters), so in the continuum HD95 = 0.95 d. The boundary voxels of a ball and of its
# integer translate are exact translates, so no distance exceeds d: HD95 <= d holds exactly;
# voxelisation can only pull the 95th percentile below 0.95 d. (The continuum's NSD(tau) = tau / d
# does not carry over to a grid shifted by a few voxels: surface distances there take a few
# discrete values; NSD is checked against DeepMind's surface-distance in test_eval_reference.py.)
@pytest.mark.parametrize(("r", "d"), [(12, 2), (12, 4), (14, 3), (15, 6)])
@pytest.mark.parametrize("hd95", ["directed", "pooled"])
def test_shifted_sphere_isotropic_matches_closed_forms(r, d, hd95):
    pred, gt = shifted_pair(r, d, axis=0)
    m = compute_case_metrics(pred, gt, {"ball": [1]}, (1.0, 1.0, 1.0), d / 2, hd95=hd95)
    ball_m = m["ball"]
    assert ball_m["dice"] == pytest.approx(dice_two_spheres(r, d), abs=0.005)
    assert 0.95 * d - 0.5 <= ball_m["hd95"] <= d + 1e-6
    assert 0.0 < ball_m["nsd"] < 1.0


def test_nsd_is_one_when_tolerance_covers_the_shift_and_grows_with_tolerance():
    pred, gt = shifted_pair(12, 4, axis=1)
    nsd = [
        compute_case_metrics(pred, gt, {"b": [1]}, (1, 1, 1), nsd_tolerance_mm=t)["b"]["nsd"]
        for t in (0.5, 1.5, 2.5, 4.0)
    ]
    assert nsd == sorted(nsd)
    assert nsd[0] < 0.3
    assert nsd[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("spacing", "axis"),
    [((2.0, 1.0, 1.0), 0), ((1.0, 1.5, 0.8), 1), ((1.0, 0.9, 2.5), 2)],
)
def test_shifted_sphere_anisotropic_spacing_in_millimetres(spacing, axis):
    radius_mm, shift_vox = 15.0, 2
    d_mm = shift_vox * spacing[axis]
    pred, gt = shifted_pair(radius_mm, shift_vox, axis, spacing)
    m = compute_case_metrics(pred, gt, {"b": [1]}, spacing)["b"]
    assert m["dice"] == pytest.approx(dice_two_spheres(radius_mm, d_mm), abs=0.01)
    assert 0.95 * d_mm - 0.5 * spacing[axis] <= m["hd95"] <= d_mm + 1e-6
    # ignoring the spacing would measure the shift in voxels instead
    unit = compute_case_metrics(pred, gt, {"b": [1]}, (1.0, 1.0, 1.0))["b"]
    assert unit["hd95"] <= shift_vox + 1e-6
    assert m["hd95"] != pytest.approx(unit["hd95"])


def test_identical_masks_are_perfect_and_torch_inputs_work():
    gt = ball((30, 30, 30), (15, 15, 15), 8)
    m = compute_case_metrics(
        torch.from_numpy(gt), torch.from_numpy(gt.copy()), {"b": [1]}, (1, 1, 1)
    )
    assert m == {"b": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}


def test_regions_are_unions_of_labels():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:8, 2:8, 2:8] = 1  # necrosis
    gt[10:16, 2:8, 2:8] = 2  # edema
    gt[2:8, 10:16, 2:8] = 4  # enhancing
    pred = gt.copy()
    pred[pred == 2] = 1  # edema called necrosis: WT unchanged, TC gains the edema block
    m = compute_case_metrics(pred, gt, BRATS, (1, 1, 1))
    assert list(m) == ["WT", "TC", "ET"]
    assert m["WT"]["dice"] == 1.0
    assert m["ET"]["dice"] == 1.0
    assert m["TC"]["dice"] == pytest.approx(2 * 432 / (648 + 432))


def test_empty_mask_policy_small_grid():
    shape, spacing = (10, 12, 7), (1.0, 2.0, 3.0)
    diag = math.sqrt(10**2 + 24**2 + 21**2)
    gt = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    pred[2:5, 2:5, 2:5] = 2  # a region only the prediction has
    gt[6:9, 6:9, 3:6] = 1  # a region only the reference has
    regions = {"one": [1], "two": [2], "three": [3]}
    m = compute_case_metrics(pred, gt, regions, spacing)
    assert m["three"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}  # both empty
    for name in ("one", "two"):  # exactly one empty, either way round
        assert m[name] == {"dice": 0.0, "hd95": pytest.approx(diag), "nsd": 0.0}
    assert all(math.isfinite(v) for r in m.values() for v in r.values())


def test_empty_mask_policy_on_the_brats_grid_gives_373_13():
    assert image_diagonal_mm((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.13, abs=0.005)
    gt = np.zeros((240, 240, 155), np.uint8)
    gt[100:120, 100:120, 60:80] = 4
    pred = np.zeros_like(gt)
    pred[100:120, 100:120, 60:80] = 2  # ET missed; whole tumour found
    m = compute_case_metrics(pred, gt, BRATS, (1.0, 1.0, 1.0))
    assert round(m["ET"]["hd95"], 2) == 373.13
    assert m["ET"]["dice"] == 0.0 and m["ET"]["nsd"] == 0.0
    assert m["WT"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}


def test_mean_region_averages_each_metric():
    gt = np.zeros((24, 24, 24), np.uint8)
    gt[4:16, 4:16, 4:16] = 1
    gt[8:12, 8:12, 8:12] = 2
    pred = gt.copy()
    pred[pred == 2] = 1  # tumour missed entirely
    m = compute_case_metrics(
        pred, gt, {"kidney": [1, 2], "tumour": [2]}, (1, 1, 1), mean_region="composite"
    )
    assert list(m) == ["kidney", "tumour", "composite"]
    assert m["composite"]["dice"] == pytest.approx(0.5)
    assert m["composite"]["hd95"] == pytest.approx(m["tumour"]["hd95"] / 2)
    assert m["composite"]["nsd"] == pytest.approx(0.5)


def test_input_errors_name_what_was_expected_and_found():
    a = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(MedtuneInputError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        compute_case_metrics(a, np.zeros((8, 8, 9), np.uint8), {"x": [1]}, (1, 1, 1))
    with pytest.raises(MedtuneInputError, match="unknown label 4.*\\[1, 2, 3\\]"):
        compute_case_metrics(a, a, {"ET": [4]}, (1, 1, 1), known_labels=[1, 2, 3])
    b = a.copy()
    b[0, 0, 0] = 7
    with pytest.raises(MedtuneInputError, match="pred: found label values \\[7\\]"):
        compute_case_metrics(b, a, {"x": [1]}, (1, 1, 1), known_labels=[1, 2])
    with pytest.raises(MedtuneInputError, match="spacing"):
        compute_case_metrics(a, a, {"x": [1]}, (1, 1))
    with pytest.raises(MedtuneInputError, match="foreground labels"):
        compute_case_metrics(a, a, {"x": [0, 1]}, (1, 1, 1))
    with pytest.raises(MedtuneInputError, match="non-integer"):
        compute_case_metrics(a + 0.5, a, {"x": [1]}, (1, 1, 1))
    with pytest.raises(MedtuneInputError, match=r"\(D, H, W\)"):
        compute_case_metrics(a[0], a[0], {"x": [1]}, (1, 1, 1))
    with pytest.raises(MedtuneInputError, match="already the name"):
        compute_case_metrics(a, a, {"x": [1]}, (1, 1, 1), mean_region="x")
    with pytest.raises(MedtuneInputError, match="hd95: expected one of directed, pooled"):
        compute_case_metrics(a, a, {"x": [1]}, (1, 1, 1), hd95="mean")


def test_whole_valued_float_labels_are_accepted():
    gt = ball((20, 20, 20), (10, 10, 10), 5)
    m = compute_case_metrics(gt.astype(np.float64), gt, {"b": [1]}, (1, 1, 1))
    assert m["b"]["dice"] == 1.0


def _with_et(n_et):
    pred = np.ones((20, 20, 20), np.uint8)  # necrosis everywhere ...
    pred.reshape(-1)[:n_et] = 4  # ... but n_et enhancing voxels
    return pred


def test_brats_postprocess_relabels_499_keeps_500():
    small = _with_et(499)
    out = brats_postprocess(small, et_label=4, replacement_label=1)
    assert (out == 4).sum() == 0 and (out == 1).sum() == small.size
    assert (small == 4).sum() == 499  # input untouched
    big = _with_et(500)
    out = brats_postprocess(big, et_label=4, replacement_label=1)
    assert (out == 4).sum() == 500
    np.testing.assert_array_equal(out, big)
    assert out is not big


def test_brats_postprocess_torch_and_errors():
    t = torch.from_numpy(_with_et(10))
    out = brats_postprocess(t, et_label=4, replacement_label=1, min_voxels=11)
    assert isinstance(out, torch.Tensor) and int((out == 4).sum()) == 0
    assert int((t == 4).sum()) == 10
    with pytest.raises(MedtuneInputError, match="et_label"):
        brats_postprocess(t, et_label=1, replacement_label=1)


def test_surface_metrics_agree_with_monai_on_the_full_volume():
    # masks touching the image border, anisotropic spacing: cropping before MONAI is exact;
    # the default HD95 is MONAI's (directed), NSD is MONAI's area-weighted surface Dice
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(3)
    gt = ball((30, 26, 22), (3, 20, 11), 9, (1.0, 1.2, 2.0))
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.05] ^= 1
    spacing = [1.0, 1.2, 2.0]
    m = compute_case_metrics(pred, gt, {"b": [1]}, spacing, nsd_tolerance_mm=1.5)["b"]
    yp = torch.from_numpy(pred)[None, None].float()
    yg = torch.from_numpy(gt)[None, None].float()
    hd = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95, spacing=spacing)
    nsd = compute_surface_dice(
        yp, yg, [1.5], include_background=True, spacing=spacing, use_subvoxels=True
    )
    assert m["hd95"] == pytest.approx(hd.item(), rel=1e-6)
    assert m["nsd"] == pytest.approx(nsd.item(), abs=1e-6)
    counted = compute_surface_dice(yp, yg, [1.5], include_background=True, spacing=spacing)
    assert abs(m["nsd"] - counted.item()) > 0.01  # not the boundary-voxel count
