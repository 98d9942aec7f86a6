"""predict / evaluate on inputs a hostile first run found passing silently: NaN / Inf voxels,
non-integer or undeclared labels, singular affines, upper-case endings, DICOM folders."""

from __future__ import annotations

import csv
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from infer_helpers import box_volume, brats_props, oblique_affine, save

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.preprocess import preprocess_image


def _error_line(capsys) -> str:
    """The one error line on stderr (progress bars and notes aside)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medtune ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def case_inputs(phantom_data, tmp_path):
    """The four channel files of one phantom case, copied into an input folder."""
    inp = tmp_path / "input"
    inp.mkdir()
    for f in sorted((phantom_data / "imagesTr").glob("brats_001_*.nii.gz")):
        shutil.copy(f, inp / f.name)
    return inp


def _poke(path, voxels, value=np.nan):
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).astype(np.float32)
    for v in voxels:
        arr[v] = value
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))  # float32 on disk


def _brain_voxel(path):
    arr = np.asarray(nib.load(str(path)).dataobj)
    return tuple(int(i) for i in np.argwhere(arr > 0)[len(np.argwhere(arr > 0)) // 2])


# --- row 3: NaN / Inf in a predicted image ----------------------------------------------------
def test_predict_refuses_nan_then_replaces_it_with_nonfinite_zero(
    tiny_run, case_inputs, tmp_path, capsys
):
    clean = tmp_path / "clean"
    assert main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(clean)]) == 0
    flair = case_inputs / "brats_001_0000.nii.gz"
    _poke(flair, [_brain_voxel(flair)])  # one NaN voxel in FLAIR
    out = tmp_path / "pred"
    args = ["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    line = _error_line(capsys)
    assert f"{flair}: expected finite intensities, found 1 NaN and 0 Inf voxels" in line
    assert "--nonfinite zero" in line
    assert not (out / "brats_001.nii.gz").exists()

    assert main([*args, "--nonfinite", "zero"]) == 0
    err = capsys.readouterr().err
    assert "brats_001: replaced 1 NaN/Inf voxel(s) by 0 after normalisation (1 in " in err
    a = np.asarray(nib.load(str(out / "brats_001.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(clean / "brats_001.nii.gz")).dataobj)
    # one voxel replaced: the label map is the clean one but for a few voxels near it (before
    # the fix the one NaN turned the whole map into background)
    assert (a == b).mean() > 0.99 and len(np.unique(b)) > 1


def test_nonfinite_zero_normalises_over_finite_voxels(tmp_path):
    """MRI z-score over the finite non-zero voxels, replaced voxels exactly 0; CT clip and
    z-score with the dataset statistics, an Inf voxel 0 rather than clipped to the upper bound."""
    img, _ = box_volume()
    bad = [(6, 8, 4), (8, 10, 6), (9, 14, 8)]  # inside the bright inner box
    poked = img.copy()
    poked[bad[0]], poked[bad[1]], poked[bad[2]] = np.nan, np.inf, -np.inf
    f = save(poked, oblique_affine(), tmp_path / "c_0000.nii.gz")
    props = brats_props()
    with pytest.raises(MedtuneInputError, match=r"found 1 NaN and 2 Inf voxels; pass --nonfinite"):
        preprocess_image([f], props)
    arr, meta = preprocess_image([f], props, nonfinite="zero")
    assert np.isfinite(arr).all() and meta["nonfinite_replaced"] == {str(f): 3}
    ref_file = save(img, oblique_affine(), tmp_path / "r_0000.nii.gz")
    ref, _ = preprocess_image([ref_file], props)
    keep = np.ones(img.shape, bool)
    for v in bad:
        keep[v] = False
    vals = img[(img != 0) & keep]
    mean, std = vals.mean(), vals.std()
    mask = np.isfinite(arr) & (ref != 0)
    raw = ref * img[img != 0].std() + img[img != 0].mean()  # undo the clean z-score
    replaced = (arr == 0) & (ref != 0)
    assert replaced.sum() == 3  # exactly the three poked voxels, in the model's grid
    np.testing.assert_allclose(
        arr[mask & ~replaced], ((raw - mean) / std)[mask & ~replaced], atol=1e-4
    )

    ct = brats_props(("CT",))
    ct.normalisation = [{"scheme": "ct", "lower": 0.0, "upper": 2.0, "mean": 1.0, "std": 0.5}]
    arr, _ = preprocess_image([f], ct, nonfinite="zero")
    ref, _ = preprocess_image([ref_file], ct)
    assert np.isfinite(arr).all() and int((arr != ref).sum()) == 3 and arr.max() <= 2.0


def test_evaluate_nonfinite_error_and_zero_with_counts_in_the_summary(
    tiny_run, phantom_data, tmp_path, capsys
):
    data = shutil.copytree(phantom_data, tmp_path / "ds")
    f = data / "imagesTr/brats_002_0003.nii.gz"
    _poke(f, [(1, 2, 3), (4, 5, 6)], value=np.inf)
    args = ["evaluate", str(tiny_run), "--data", str(data), "--split", "all"]
    assert main([*args, "--out", str(tmp_path / "e1")]) == 2
    assert f"{f}: expected finite intensities, found 0 NaN and 2 Inf voxels" in _error_line(capsys)
    out = tmp_path / "e2"
    assert main([*args, "--out", str(out), "--nonfinite", "zero"]) == 0
    assert "brats_002: replaced 2 NaN/Inf voxel(s)" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nonfinite"] == "zero" and summary["nonfinite_replaced_voxels"] == 2
    rows = {r["case_id"]: r for r in csv.DictReader((out / "per_case.csv").open())}
    assert int(float(rows["brats_002"]["nonfinite_replaced"])) == 2
    assert int(float(rows["brats_000"]["nonfinite_replaced"])) == 0


# --- rows 5 and smaller: labels evaluate reads ------------------------------------------------
def test_evaluate_refuses_non_integer_and_undeclared_labels_naming_the_file(
    tiny_run, phantom_data, tmp_path, capsys
):
    data = shutil.copytree(phantom_data, tmp_path / "ds")
    f = data / "labelsTr/brats_000.nii.gz"
    img = nib.load(str(f))
    lab = np.asarray(img.dataobj).astype(np.float32)
    lab[lab == 2] = 0.5
    nib.save(nib.Nifti1Image(lab, img.affine), str(f))
    args = ["evaluate", str(tiny_run), "--data", str(data), "--split", "all"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 2
    assert _error_line(capsys).endswith(
        f"{f}: expected integer label values, found [0.5] (run medtune check-data)"
    )
    lab[lab == 0.5] = 7
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), str(f))
    assert main([*args, "--out", str(tmp_path / "e")]) == 2
    assert f"{f}: expected label values declared in dataset.json [0, 1, 2, 3], found [7]" in (
        _error_line(capsys)
    )


# --- row 6: singular affine -------------------------------------------------------------------
def test_predict_refuses_a_singular_affine_before_loading_the_model(
    tiny_run, case_inputs, tmp_path, capsys
):
    f = case_inputs / "brats_001_0001.nii.gz"
    img = nib.load(str(f))
    aff = img.affine.copy()
    aff[:3, 0] = 0
    img.set_sform(aff, code=1)
    img.set_qform(None, code=0)
    nib.save(img, str(f))
    out = tmp_path / "o"
    assert main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert (
        f"{f}: expected an invertible affine (voxel -> mm, from the sform/qform), found column(s) 0 all zero"
        in line
    )
    assert not out.exists()


# --- smaller: what predict found instead of NIfTI ---------------------------------------------
def test_predict_names_upper_case_endings_and_dicom(tiny_run, case_inputs, tmp_path, capsys):
    for f in case_inputs.iterdir():
        f.rename(f.with_name(f.name.replace(".nii.gz", ".NII.GZ")))
    base = ["predict", str(tiny_run), "--out", str(tmp_path / "o")]
    assert main([*base, "--input", str(case_inputs)]) == 2
    assert _error_line(capsys).endswith(
        "found 4 file(s) ending .NII.GZ (endings are case-sensitive: rename to .nii.gz)"
    )
    one = next(case_inputs.iterdir())
    assert main([*base, "--input", str(one)]) == 2
    assert "endings are case-sensitive" in _error_line(capsys)
    dicom = tmp_path / "dicom" / "series1"
    dicom.mkdir(parents=True)
    for i in range(5):
        (dicom / f"slice{i}.dcm").write_bytes(b"\0" * 132)
    assert main([*base, "--input", str(tmp_path / "dicom")]) == 2
    line = _error_line(capsys)
    assert (
        "found a DICOM series (5 DICOM file(s)); predict reads DICOM Part 10 files (a 'DICM' "
        "preamble) from one folder per case" in line
    )


# --- smaller: file modes ----------------------------------------------------------------------
def test_adapter_files_have_the_mode_of_a_plain_open(tiny_run, tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    want = os.stat(plain).st_mode & 0o777
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert os.stat(tiny_run / "adapter" / name).st_mode & 0o777 == want, name
