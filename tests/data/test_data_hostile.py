"""Inputs a hostile first run found passing silently: NaN images cached for training, non-integer
labels truncated, singular affines read as identity; and what the cache records about them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data import cached, preprocess
from medtune.data.cached import load_case
from medtune.data.config import DataConfig
from medtune.data.io import load_images, read_label_map
from medtune.data.loaders import TrainCropDataset, VolumeDataset
from medtune.data.preprocess import PROPS_FILE, preprocess_dataset


def _resave(path, arr, affine=None, dtype=None):
    ref = nib.load(str(path))
    img = nib.Nifti1Image(np.asarray(arr, dtype=dtype or ref.get_data_dtype()), ref.affine)
    if affine is not None:  # a singular sform, as an editing tool can leave it
        img.set_sform(affine, code=1)
        img.set_qform(None, code=0)
    nib.save(img, str(path))


def _singular(path):
    aff = nib.load(str(path)).affine.copy()
    aff[:3, 2] = 0  # a zero column: voxel axis 2 has no length
    _resave(path, np.asarray(nib.load(str(path)).dataobj), affine=aff)


def _one_line(capsys) -> str:
    """The error line of stderr (progress bars aside): exactly one, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medtune ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- row 4: NaN in a training image -----------------------------------------------------------
def test_preprocess_refuses_a_nan_image(brats_copy, tmp_path, capsys):
    f = brats_copy / "imagesTr/brats_002_0000.nii.gz"
    arr = np.asarray(nib.load(str(f)).dataobj).astype(np.float32)
    arr[10, 11, 12] = np.nan
    arr[1, 2, 3] = -np.inf
    _resave(f, arr, dtype=np.float32)
    cache = tmp_path / "cache"
    assert main(["preprocess", str(brats_copy), "--out", str(cache)]) == 2
    err = _one_line(capsys)
    assert f"{f}: expected finite intensities, found 1 NaN and 1 Inf voxels" in err
    assert not (cache / "cases/brats_002.json").exists()  # nothing cached for that case
    assert not (cache / "cases/brats_002.npy").exists()


def test_cases_record_their_checks_and_old_caches_are_rebuilt(brats_root, tmp_path, capsys):
    cache = preprocess_dataset(brats_root, tmp_path / "cache")
    assert (
        json.loads((cache / PROPS_FILE).read_text())["format_version"] == preprocess.CACHE_VERSION
    )
    _, _, meta = load_case(cache, "brats_001")
    assert meta["checks"] == list(preprocess.CASE_CHECKS)
    # A cache written before cases recorded their checks (format 1) is rebuilt, with a note.
    props = json.loads((cache / PROPS_FILE).read_text())
    props["format_version"] = 1
    (cache / PROPS_FILE).write_text(json.dumps(props))
    capsys.readouterr()
    _, stats = preprocess_dataset(brats_root, cache, return_stats=True)
    assert stats == {"done": 4, "skipped": 0}
    assert "cache format 1 is outdated" in capsys.readouterr().err


def test_training_readers_check_cases_without_a_record(brats_root, tmp_path):
    cache = preprocess_dataset(brats_root, tmp_path / "cache")
    ids = ["brats_000", "brats_001", "brats_002"]
    assert cached.verify_cached_cases(cache, ids) == []  # every case recorded: nothing re-read
    meta_file = cache / "cases/brats_001.json"
    meta = json.loads(meta_file.read_text())
    del meta["checks"]  # as an older medtune wrote it
    meta_file.write_text(json.dumps(meta))
    assert cached.verify_cached_cases(cache, ids) == ["brats_001"]  # clean: checked, accepted
    img = np.load(cache / "cases/brats_001.npy")
    img[0, 3, 4, 5] = np.nan
    np.save(cache / "cases/brats_001.npy", img)
    cfg = DataConfig(crop_size=[8, 16, 16], num_workers=0)
    want = r"brats_001\.npy: expected finite intensities, found 1 NaN and 0 Inf voxels"
    with pytest.raises(MedtuneInputError, match=want + r".*medtune preprocess"):
        TrainCropDataset(cache, ids, cfg)
    with pytest.raises(MedtuneInputError, match=want):
        VolumeDataset(cache, ["brats_001"])
    TrainCropDataset(cache, ["brats_000", "brats_002"], cfg)  # the other cases are fine


# --- row 5: non-integer labels ----------------------------------------------------------------
def test_non_integer_labels_are_refused_by_preprocess_and_readers(brats_copy, tmp_path, capsys):
    f = brats_copy / "labelsTr/brats_003.nii.gz"
    lab = np.asarray(nib.load(str(f)).dataobj).astype(np.float32)
    lab[lab == 1] = 0.5  # NCR voxels at 0.5: rint made them background
    _resave(f, lab, dtype=np.float32)
    assert main(["check-data", str(brats_copy)]) == 2
    assert "expected integer label values, found [0.5]" in capsys.readouterr().out
    assert main(["preprocess", str(brats_copy), "--out", str(tmp_path / "c")]) == 2
    assert _one_line(capsys).endswith(
        f"{f}: expected integer label values, found [0.5] (run medtune check-data)"
    )
    with pytest.raises(MedtuneInputError, match=r"brats_003.nii.gz: expected integer label"):
        read_label_map(f)


def test_undeclared_label_named_by_reader(brats_copy):
    f = brats_copy / "labelsTr/brats_000.nii.gz"
    lab = np.asarray(nib.load(str(f)).dataobj).copy()
    lab[0, 0, 0] = 7
    _resave(f, lab)
    arr, _ = read_label_map(f)  # without declared labels: read as stored
    assert arr.max() == 7
    with pytest.raises(
        MedtuneInputError, match=r"brats_000.nii.gz: expected label values .* found \[7\]"
    ):
        read_label_map(f, declared=[0, 1, 2, 3])


# --- row 6: singular affines ------------------------------------------------------------------
def test_singular_affine_is_refused_everywhere(brats_copy, tmp_path, capsys):
    img_file = brats_copy / "imagesTr/brats_001_0002.nii.gz"
    lab_file = brats_copy / "labelsTr/brats_002.nii.gz"
    _singular(img_file)
    _singular(lab_file)
    assert main(["check-data", str(brats_copy)]) == 2
    out = capsys.readouterr().out
    for rel in ("imagesTr/brats_001_0002.nii.gz", "labelsTr/brats_002.nii.gz"):
        assert (
            f"{rel}: expected an invertible affine (voxel -> mm, from the sform/qform), found column(s) 2 all zero"
            in out
        )
    assert main(["preprocess", str(brats_copy), "--out", str(tmp_path / "c")]) == 2
    err = _one_line(capsys)
    assert "expected an invertible affine" in err and "column(s) 2 all zero" in err
    for f in (img_file, lab_file):
        with pytest.raises(MedtuneInputError, match=f"{f.name}: expected an invertible affine"):
            load_images(f)
    with pytest.raises(MedtuneInputError, match=f"{lab_file.name}: expected an invertible affine"):
        read_label_map(lab_file)


# --- smaller: what check-data reports ---------------------------------------------------------
def test_check_data_on_a_file_says_file(brats_root, capsys):
    target = brats_root / "dataset.json"
    assert main(["check-data", str(target)]) == 2
    assert capsys.readouterr().out.strip() == (
        f"(dataset) {target}: expected a dataset folder, found a file"
    )


def test_zero_sized_dimension_reports_the_real_shape(brats_copy, capsys):
    f = brats_copy / "imagesTr/brats_000_0001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 48, 48), np.int16), nib.load(str(f)).affine), str(f))
    assert main(["check-data", str(brats_copy)]) == 2
    out = capsys.readouterr().out
    assert (
        "brats_000 imagesTr/brats_000_0001.nii.gz: expected a non-empty image, found shape "
        "(0, 48, 48) (a zero-sized dimension)" in out
    )
    assert "1D" not in out
    with pytest.raises(MedtuneInputError, match=r"found shape \(0, 48, 48\)"):
        load_images(f)


def test_upper_case_endings_are_named(brats_copy, capsys):
    for sub in ("imagesTr", "labelsTr"):
        for f in (brats_copy / sub).iterdir():
            f.rename(f.with_name(f.name.replace(".nii.gz", ".NII.GZ")))
    assert main(["check-data", str(brats_copy)]) == 2
    assert capsys.readouterr().out.strip() == (
        "(dataset) imagesTr/: expected at least one training case, found 16 file(s) ending "
        ".NII.GZ (endings are case-sensitive: rename to .nii.gz)"
    )


def test_dicom_folders_are_named(brats_copy, capsys):
    for sub in ("imagesTr", "labelsTr"):
        for f in (brats_copy / sub).iterdir():
            f.unlink()
    series = brats_copy / "imagesTr" / "case_a"
    series.mkdir()
    for i in range(3):  # DICOM Part 10: a 128-byte preamble, then "DICM"
        (series / f"IM{i:04d}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert main(["check-data", str(brats_copy)]) == 2
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        "(dataset) imagesTr/: expected at least one training case, found a DICOM series "
        "(3 DICOM file(s)); not read here: convert the series to a NIfTI dataset first "
        "(medtune convert --format dicom)"
    )
