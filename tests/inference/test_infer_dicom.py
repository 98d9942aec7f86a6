"""DICOM series in: geometry read through MONAI's PydicomReader against the positions the test
wrote (oblique, anisotropic, shuffled files), refusals, predict on DICOM case folders, and
`convert --format dicom`."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import LPS, oblique_ras_affine, write_series
from infer_helpers import PositiveIsClass, brats_props, save

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.dicom import series_geometry
from medtune.data.io import load_images
from medtune.inference import Predictor, predict_files
from medtune.inference.predict import find_cases

SHAPE = (12, 16, 8)  # (X, Y, Z) = columns, rows, slices


def _volume(shape=SHAPE) -> np.ndarray:
    return (2 * (np.arange(np.prod(shape)).reshape(shape) % 997) - 600).astype(np.int16)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("reverse", [False, True])
def test_series_geometry_matches_the_positions_written(tmp_path, reverse):
    vol, aff = _volume(), oblique_ras_affine()
    positions = write_series(
        tmp_path / "s", vol, aff, reverse_numbers=reverse, slope=2.0, intercept=-1024.0
    )
    (tmp_path / "s" / "notes.txt").write_text("not a slice")  # ignored: no DICOM preamble
    img = load_images(tmp_path / "s")
    got = np.asarray(img.affine, dtype=np.float64)
    assert tuple(img.shape) == (1, *SHAPE)
    nz = SHAPE[2]
    # each slice plane k of the volume lies where the file of that slice said it is (RAS = LPS
    # with x and y flipped), and holds that slice's pixels, rescaled
    for k in range(nz):
        z = nz - 1 - k if reverse else k
        world = got @ np.array([0.0, 0.0, k, 1.0])
        np.testing.assert_allclose(world[:3], (LPS[:3, :3] @ positions[z]), atol=1e-9)
        np.testing.assert_array_equal(img[0, :, :, k].numpy(), vol[:, :, z].astype(np.float32))
    # orientation and anisotropic spacing of the series: the written affine, slice axis
    # reversed when the instance numbers run against the positions
    expected = aff.copy()
    if reverse:
        expected[:3, 3] = aff[:3, 3] + (nz - 1) * aff[:3, 2]
        expected[:3, 2] = -aff[:3, 2]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    geom = series_geometry(tmp_path / "s")
    assert geom.shape == SHAPE
    np.testing.assert_allclose(geom.affine, got, atol=1e-9)


def test_series_refusals_name_the_file(tmp_path):
    vol, aff = _volume(), oblique_ras_affine()
    write_series(tmp_path / "gap", vol, aff, shuffle=False)
    (tmp_path / "gap" / "IM0003.dcm").unlink()  # slice 4 of 8 missing
    with pytest.raises(MedtuneInputError, match=r"expected equally spaced slices on one line"):
        series_geometry(tmp_path / "gap")

    write_series(tmp_path / "two", vol, aff, names="A{n:04d}.dcm")
    write_series(tmp_path / "two", vol, aff, names="B{n:04d}.dcm")
    with pytest.raises(
        MedtuneInputError, match=r"two: expected one DICOM series per folder, found 2"
    ):
        series_geometry(tmp_path / "two")

    write_series(tmp_path / "one", vol[:, :, :1], aff)
    with pytest.raises(MedtuneInputError, match=r"at least 2 slices \(a volume\), found 1"):
        series_geometry(tmp_path / "one")

    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.dcm").write_bytes(b"\0" * 200)  # no preamble: not a DICOM file
    with pytest.raises(
        MedtuneInputError, match=r"none: expected the DICOM files of a series, found none"
    ):
        series_geometry(tmp_path / "none")


def _box(shape=(20, 24, 14)) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z) int16, inner mask): zero background, a box of 100, an inner box of 300
    (after the z-score over non-zero voxels exactly the inner box is positive)."""
    img = np.zeros(shape, np.int16)
    img[3:17, 4:20, 2:12] = 100
    img[6:10, 8:15, 4:9] = 300
    return img, img == 300


def _predictor(channels=("A",)) -> Predictor:
    return Predictor(PositiveIsClass(cls=3), brats_props(channels), (8, 16, 16), overlap=0.5)


def test_predict_dicom_case_writes_the_series_geometry(tmp_path):
    img, inner = _box()
    aff = oblique_ras_affine(col_mm=0.8, row_mm=1.2, slice_mm=3.0)
    positions = write_series(tmp_path / "in" / "patient7", img, aff)
    save(img.astype(np.float32), aff, tmp_path / "nifti" / "patient7_0000.nii.gz")
    (out,) = predict_files(
        _predictor(), tmp_path / "in", tmp_path / "out", save_probabilities=True, progress=False
    )
    assert out == tmp_path / "out" / "patient7.nii.gz"
    pred = nib.load(str(out))
    assert pred.shape == img.shape
    # the affine is the series' LPS geometry in the NIfTI (RAS) convention: voxel (0, 0, k)
    # lies at slice k's ImagePositionPatient with x and y negated
    for k, pos in enumerate(positions):
        np.testing.assert_allclose(pred.affine @ [0, 0, k, 1], [*(LPS[:3, :3] @ pos), 1], atol=1e-6)
    np.testing.assert_allclose(pred.affine, aff, atol=1e-6)
    assert pred.header.get_sform(coded=True)[1] == 1 and pred.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(pred.header.get_qform(), aff, atol=1e-5)
    lab = np.asarray(pred.dataobj)
    np.testing.assert_array_equal(lab == 4, inner)  # ET (class 3) in the source convention: 4
    probs = nib.load(str(tmp_path / "out" / "patient7_probs.nii.gz"))
    assert probs.shape == (*img.shape, 4) and np.allclose(probs.affine, aff, atol=1e-6)
    (ref,) = predict_files(_predictor(), tmp_path / "nifti", tmp_path / "out_nii", progress=False)
    np.testing.assert_array_equal(lab, np.asarray(nib.load(str(ref)).dataobj))


def test_multi_channel_dicom_case_folders(tmp_path, capsys):
    img, inner = _box()
    aff = oblique_ras_affine()
    case = tmp_path / "in" / "c1"
    write_series(case / "a", img, aff)  # channel A by name (any case)
    write_series(case / "0001", (img > 0).astype(np.int16) * 50, aff)  # channel B by index
    cases = find_cases(tmp_path / "in", ["A", "B"])
    assert [(c.case_id, c.files) for c in cases] == [("c1", [case / "a", case / "0001"])]
    assert find_cases(case, ["A", "B"])[0].files == [case / "a", case / "0001"]  # the case itself
    (out,) = predict_files(_predictor(("A", "B")), tmp_path / "in", tmp_path / "o", progress=False)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj) == 4, inner)

    shutil.rmtree(case / "0001")
    with pytest.raises(
        MedtuneInputError, match=r"c1/0001: expected the series of channel 1 \(B\) of case c1"
    ):
        find_cases(tmp_path / "in", ["A", "B"])
    write_series(case / "0001", img[:, :, :10], aff)  # another grid
    with pytest.raises(
        MedtuneInputError,
        match=r"0001: expected the channel grid of a \(20, 24, 14\), found \(20, 24, 10\)",
    ):
        predict_files(_predictor(("A", "B")), tmp_path / "in", tmp_path / "o2", progress=False)
    write_series(tmp_path / "single" / "c2", img, aff)
    with pytest.raises(
        MedtuneInputError,
        match=r"c2: expected one sub-folder per channel \(0000..0001 or A, B\) for a 2-channel model, found a single DICOM series",
    ):
        find_cases(tmp_path / "single", ["A", "B"])
    write_series(tmp_path / "odd" / "c3" / "T1_MPRAGE", img, aff)
    with pytest.raises(MedtuneInputError, match=r"T1_MPRAGE: expected one sub-folder per channel"):
        find_cases(tmp_path / "odd", ["A", "B"])


def _dicom_source(root, label_affine=None):
    """SRC/p1 (labelled) and SRC/p2 (unlabelled) CT series + SRC/labels/p1.nii.gz + template."""
    img, inner = _box()
    aff = oblique_ras_affine(col_mm=0.8, row_mm=1.2, slice_mm=3.0)
    write_series(root / "p1", img, aff, slope=1.0, intercept=-1024.0)
    write_series(root / "p2", img[::-1].copy(), aff)
    save(
        inner.astype(np.uint8),
        aff if label_affine is None else label_affine,
        root / "labels" / "p1.nii.gz",
    )
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "DicomToy",
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "core": 1},
            }
        )
    )
    return img, inner, aff


def test_convert_dicom_builds_an_nnunet_dataset(tmp_path, capsys):
    img, inner, aff = _dicom_source(tmp_path / "src")
    out = tmp_path / "ds"
    assert (
        main(["convert", "--format", "dicom", "--src", str(tmp_path / "src"), "--out", str(out)])
        == 0
    )
    assert "converted 1 training and 1 test cases (dicom) to" in capsys.readouterr().out
    im = nib.load(str(out / "imagesTr" / "p1_0000.nii.gz"))
    assert im.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(im.dataobj), img)  # rescaled back to the values
    np.testing.assert_allclose(im.affine, aff, atol=1e-6)
    lab = nib.load(str(out / "labelsTr" / "p1.nii.gz"))
    np.testing.assert_array_equal(np.asarray(lab.dataobj), inner)
    assert np.array_equal(lab.affine, im.affine)
    ts = nib.load(str(out / "imagesTs" / "p2_0000.nii.gz"))
    np.testing.assert_array_equal(np.asarray(ts.dataobj), img[::-1])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 1
    assert meta["medtune"]["source_format"] == "dicom"
    assert main(["check-data", str(out)]) == 0


def test_convert_dicom_refuses_a_label_off_the_series_grid(tmp_path, capsys):
    aff = oblique_ras_affine(col_mm=0.8, row_mm=1.2, slice_mm=3.0)
    shifted = aff.copy()
    shifted[:3, 3] += [0.0, 2.0, 0.0]
    _dicom_source(tmp_path / "src", label_affine=shifted)
    out = tmp_path / "ds"
    assert (
        main(["convert", "--format", "dicom", "--src", str(tmp_path / "src"), "--out", str(out)])
        == 2
    )
    line = _error(capsys)
    assert line.endswith(
        f"{tmp_path / 'src' / 'labels' / 'p1.nii.gz'}: expected the grid of the series "
        f"{tmp_path / 'src' / 'p1'} (shape (20, 24, 14), affine within 0.001), found shape "
        "(20, 24, 14) and an affine differing by 2; write the label on the series' grid"
    )
    assert not any(out.rglob("*.nii.gz"))


def test_gantry_tilted_series_keeps_its_sheared_geometry(tmp_path):
    """Slice positions not along the slice normal (a tilted CT gantry): the affine is sheared as
    the positions say; the output's sform holds it (a qform cannot), qform code 0."""
    img, inner = _box()
    aff = oblique_ras_affine(col_mm=0.8, row_mm=1.2, slice_mm=3.0)
    aff[:3, 2] += 0.4 * aff[:3, 1]  # each slice shifted along the column direction
    write_series(tmp_path / "in" / "tilted", img, aff)
    (out,) = predict_files(_predictor(), tmp_path / "in", tmp_path / "out", progress=False)
    pred = nib.load(str(out))
    sform, code = pred.header.get_sform(coded=True)
    assert code == 1 and pred.header.get_qform(coded=True)[1] == 0
    np.testing.assert_allclose(sform, aff, atol=1e-5)
    assert pred.shape == img.shape
