"""Predictions land exactly on the input's voxel grid, in the source label convention
(a fake model with a known answer, oblique anisotropic affines, no network)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from infer_helpers import PositiveIsClass, box_volume, brats_props, oblique_affine, save

from medtune.core.errors import MedtuneInputError
from medtune.inference import Predictor, predict_files
from medtune.inference.predict import find_cases


def predictor(cls=1, spacing=None, channels=("A",), window=(8, 16, 16)) -> Predictor:
    return Predictor(PositiveIsClass(cls=cls), brats_props(channels, spacing), window, overlap=0.5)


@pytest.mark.parametrize("flip_x", [True, False])
def test_round_trip_exact_on_oblique_anisotropic_grid(tmp_path, flip_x):
    img, inner = box_volume()
    aff = oblique_affine(zooms=(0.9, 1.3, 2.7), flip_x=flip_x)
    src = save(img, aff, tmp_path / "in" / "c1_0000.nii.gz")
    (out,) = predict_files(predictor(cls=1), tmp_path / "in", tmp_path / "out", progress=False)
    assert out == tmp_path / "out" / "c1.nii.gz"
    pred, ref = nib.load(str(out)), nib.load(str(src))
    assert pred.shape == ref.shape
    assert np.array_equal(pred.affine, ref.affine)
    assert np.array_equal(pred.header.get_zooms(), ref.header.get_zooms())
    assert pred.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
    assert pred.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
    assert pred.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(pred.dataobj), inner.astype(np.uint8))
    if flip_x:  # the fake model is flip-equivariant: 8-way flip TTA gives the same labels
        (tta,) = predict_files(
            predictor(cls=1), src, tmp_path / "out_tta", tta="flip8", progress=False
        )
        np.testing.assert_array_equal(np.asarray(nib.load(str(tta)).dataobj), inner)


def test_label_convention_mapped_back_and_probabilities(tmp_path):
    img, inner = box_volume()
    save(img, oblique_affine(), tmp_path / "in" / "c1_0000.nii.gz")
    (out,) = predict_files(
        predictor(cls=3),
        tmp_path / "in",
        tmp_path / "out",
        save_probabilities=True,
        progress=False,
    )
    lab = np.asarray(nib.load(str(out)).dataobj)
    assert set(np.unique(lab).tolist()) == {0, 4}  # class 3 (ET) written as BraTS 2019's 4
    np.testing.assert_array_equal(lab == 4, inner)
    probs = nib.load(str(tmp_path / "out" / "c1_probs.nii.gz"))
    p = np.asarray(probs.dataobj)
    assert p.shape == (*img.shape, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1) == 3, inner)
    assert np.array_equal(probs.affine, nib.load(str(out)).affine)


def test_resampled_model_grid_maps_back(tmp_path):
    """With a target spacing the image is resampled for the model and the labels resampled back:
    same shape and affine as the input, nearly the same voxels."""
    img, inner = box_volume(shape=(30, 36, 14))
    img[:] = 0
    img[3:27, 4:32, 2:12] = 1.0
    img[8:22, 10:26, 4:10] = 3.0
    inner = img == 3.0
    src = save(img, oblique_affine(zooms=(0.8, 1.1, 2.5)), tmp_path / "in" / "c1_0000.nii.gz")
    (out,) = predict_files(
        predictor(cls=1, spacing=(1.5, 1.5, 1.5)), src, tmp_path / "out", progress=False
    )
    pred = nib.load(str(out))
    assert pred.shape == img.shape and np.array_equal(pred.affine, nib.load(str(src)).affine)
    p = np.asarray(pred.dataobj) == 1
    dice = 2 * (p & inner).sum() / (p.sum() + inner.sum())
    assert dice > 0.85


def test_4d_input_and_channel_grouping(tmp_path):
    img, inner = box_volume()
    aff = oblique_affine()
    four_d = np.stack([img, img * 2, img * 3, img], axis=-1)
    save(four_d, aff, tmp_path / "in4d" / "caseA.nii.gz")
    (out,) = predict_files(
        predictor(channels=("A", "B", "C", "D")),
        tmp_path / "in4d" / "caseA.nii.gz",
        tmp_path / "out",
        progress=False,
    )
    pred = nib.load(str(out))
    assert out.name == "caseA.nii.gz" and pred.shape == img.shape
    assert np.array_equal(pred.affine, aff) or np.allclose(pred.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(pred.dataobj), inner.astype(np.uint8))
    # a folder mixing channel files and a 4D file; naming one channel file takes its siblings
    for c in range(4):
        save(four_d[..., c], aff, tmp_path / "in4d" / f"caseB_{c:04d}.nii.gz")
    names = ["A", "B", "C", "D"]
    cases = find_cases(tmp_path / "in4d", names)
    assert [(c.case_id, len(c.files)) for c in cases] == [("caseA", 1), ("caseB", 4)]
    (one,) = find_cases(tmp_path / "in4d" / "caseB_0002.nii.gz", names)
    assert one.case_id == "caseB" and [f.name[-11:-7] for f in one.files] == [
        "0000",
        "0001",
        "0002",
        "0003",
    ]


def test_case_folders_and_input_errors(tmp_path):
    img, _ = box_volume()
    for case in ("p1", "p2"):
        save(img, np.eye(4), tmp_path / "cases" / case / f"{case}_0000.nii.gz")
    assert [c.case_id for c in find_cases(tmp_path / "cases", ["A"])] == ["p1", "p2"]
    save(img, np.eye(4), tmp_path / "two" / "x_0000.nii.gz")
    with pytest.raises(MedtuneInputError, match=r"x_0001\.nii\.gz: expected the file of channel 1"):
        find_cases(tmp_path / "two", ["A", "B"])
    with pytest.raises(MedtuneInputError, match="found channel 0003"):
        save(img, np.eye(4), tmp_path / "two" / "x_0003.nii.gz")
        find_cases(tmp_path / "two", ["A"])
    with pytest.raises(MedtuneInputError, match="no such path"):
        find_cases(tmp_path / "missing", ["A"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedtuneInputError, match="found none"):
        find_cases(tmp_path / "empty", ["A"])
    save(img, np.eye(4), tmp_path / "three" / "y.nii.gz")
    with pytest.raises(
        MedtuneInputError, match=r"expected a 4D image with 2 volumes .* found shape \(20, 24, 14\)"
    ):
        predict_files(
            predictor(channels=("A", "B")), tmp_path / "three", tmp_path / "o3", progress=False
        )
