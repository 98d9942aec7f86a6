import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main

LINE = re.compile(r"^\S+ \S+: expected .+, found .+$")


def _img(root: Path, name: str):
    return nib.load(str(root / name))


def _resave(root: Path, name: str, arr, affine=None, dtype=None):
    ref = _img(root, name)
    arr = np.asarray(arr, dtype=dtype or ref.get_data_dtype())
    nib.save(nib.Nifti1Image(arr, ref.affine if affine is None else affine), str(root / name))


def missing_channel(root):
    (root / "imagesTr/brats_001_0002.nii.gz").unlink()
    return "brats_001 imagesTr/brats_001_0002.nii.gz: expected a file for channel 2, found none"


def not_nifti(root):
    (root / "imagesTr/brats_001_0001.nii.gz").write_bytes(
        gzip.compress(b"this is not an image" * 10)
    )
    return "brats_001 imagesTr/brats_001_0001.nii.gz: expected a readable NIfTI file"


def truncated(root):
    p = root / "imagesTr/brats_002_0000.nii.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "brats_002 imagesTr/brats_002_0000.nii.gz: expected a complete NIfTI file, found unreadable data"


def shape_mismatch(root):
    lab = np.asarray(_img(root, "labelsTr/brats_000.nii.gz").dataobj)
    _resave(root, "labelsTr/brats_000.nii.gz", lab[:-2])
    return "brats_000 labelsTr/brats_000.nii.gz: expected shape"


def affine_mismatch(root):
    ref = _img(root, "labelsTr/brats_000.nii.gz")
    aff = ref.affine.copy()
    aff[:3, 3] += 1.5
    _resave(root, "labelsTr/brats_000.nii.gz", np.asarray(ref.dataobj), affine=aff)
    return (
        "brats_000 labelsTr/brats_000.nii.gz: expected the affine of imagesTr/brats_000_0000.nii.gz"
    )


def undeclared_label(root):
    lab = np.asarray(_img(root, "labelsTr/brats_003.nii.gz").dataobj).copy()
    lab[0, 0, 0] = 4  # BraTS 2019 ET value left unconverted
    _resave(root, "labelsTr/brats_003.nii.gz", lab)
    return "brats_003 labelsTr/brats_003.nii.gz: expected label values declared in dataset.json [0, 1, 2, 3], found [4]"


def nan_inf(root):
    arr = np.asarray(_img(root, "imagesTr/brats_001_0003.nii.gz").dataobj).astype(np.float32)
    arr[1, 2, 3], arr[4, 5, 6], arr[7, 8, 9] = np.nan, np.inf, -np.inf
    _resave(root, "imagesTr/brats_001_0003.nii.gz", arr, dtype=np.float32)
    return "brats_001 imagesTr/brats_001_0003.nii.gz: expected finite intensities, found 1 NaN and 2 Inf voxels"


def two_d(root):
    arr = np.asarray(_img(root, "imagesTr/brats_000_0001.nii.gz").dataobj)
    _resave(root, "imagesTr/brats_000_0001.nii.gz", arr[:, :, 10])
    return "brats_000 imagesTr/brats_000_0001.nii.gz: expected a 3D image, found a 2D array"


def five_d(root):
    arr = np.asarray(_img(root, "imagesTr/brats_000_0001.nii.gz").dataobj)
    _resave(root, "imagesTr/brats_000_0001.nii.gz", arr[..., None, None].repeat(2, 4))
    return "brats_000 imagesTr/brats_000_0001.nii.gz: expected a 3D image, found a 5D array"


def empty(root):
    for sub in ("imagesTr", "labelsTr"):
        shutil.rmtree(root / sub)
        (root / sub).mkdir()
    return "(dataset) imagesTr/: expected at least one training case, found none"


def duplicate_id(root):
    img = _img(root, "imagesTr/brats_002_0000.nii.gz")
    nib.save(img, str(root / "imagesTr/brats_002_0000.nii"))
    return "brats_002 imagesTr/brats_002_0000.*: expected one file per channel (duplicate case id), found brats_002_0000.nii, brats_002_0000.nii.gz"


def missing_field(root):
    ds = json.loads((root / "dataset.json").read_text())
    del ds["file_ending"]
    (root / "dataset.json").write_text(json.dumps(ds))
    return "(dataset) dataset.json: expected required field 'file_ending', found none"


def no_dataset_json(root):
    (root / "dataset.json").unlink()
    return "(dataset) dataset.json: expected a dataset.json file, found none"


def broken_symlink(root):
    (root / "imagesTr/brats_003_0003.nii.gz").unlink()
    (root / "imagesTr/brats_003_0003.nii.gz").symlink_to(root / "moved-away.nii.gz")
    return "brats_003 imagesTr/brats_003_0003.nii.gz: expected a file, found a broken symlink"


BREAKERS = [
    broken_symlink,
    missing_channel,
    not_nifti,
    truncated,
    shape_mismatch,
    affine_mismatch,
    undeclared_label,
    nan_inf,
    two_d,
    five_d,
    empty,
    duplicate_id,
    missing_field,
    no_dataset_json,
]


def test_clean_dataset_passes(brats_root, capsys):
    assert main(["check-data", str(brats_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "4 training cases" in out


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__ for b in BREAKERS])
def test_each_problem_is_one_line_exit_2_nothing_written(brats_copy, capsys, breaker, tree_hash):
    expected = breaker(brats_copy)
    before = tree_hash(brats_copy)
    assert main(["check-data", str(brats_copy)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines, "no problem reported"
    assert all(LINE.match(line) for line in lines), lines
    assert any(line.startswith(expected) for line in lines), lines
    assert tree_hash(brats_copy) == before  # nothing written


def test_several_problems_all_reported(brats_copy, capsys):
    missing_channel(brats_copy)
    undeclared_label(brats_copy)
    assert main(["check-data", str(brats_copy)]) == 2
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_subcommand_help(capsys):
    for cmd in ("phantoms", "convert", "check-data", "preprocess"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "-h"])
        assert exc.value.code == 0
        assert "usage: medtune " + cmd in capsys.readouterr().out


def test_labels_ts_are_read_and_checked(brats_copy, capsys):
    from medtune.data.dataset import load_dataset

    for sub, dst in (("imagesTr", "imagesTs"), ("labelsTr", "labelsTs")):
        (brats_copy / dst).mkdir()
        for f in (brats_copy / sub).glob("brats_003*"):
            f.rename(brats_copy / dst / f.name)
    (brats_copy / "imagesTs" / "brats_002_0000.nii.gz").write_bytes(
        (brats_copy / "imagesTr" / "brats_002_0000.nii.gz").read_bytes()
    )  # a test case without a label: allowed (labelsTs may cover some cases)
    for c in range(1, 4):
        shutil.copy(brats_copy / "imagesTr" / f"brats_002_{c:04d}.nii.gz", brats_copy / "imagesTs")
    meta = json.loads((brats_copy / "dataset.json").read_text())
    meta["numTraining"] = 3
    (brats_copy / "dataset.json").write_text(json.dumps(meta))
    info = load_dataset(brats_copy)
    labels = {c.case_id: c.label for c in info.test_cases}
    assert labels == {"brats_002": None, "brats_003": brats_copy / "labelsTs" / "brats_003.nii.gz"}
    assert main(["check-data", str(brats_copy)]) == 0
    capsys.readouterr()
    from medtune.core.errors import MedtuneInputError
    from medtune.evaluation.evaluate import select_cases

    with pytest.raises(MedtuneInputError) as exc:  # evaluate --split test needs every label
        select_cases(info, "test", 0)
    assert str(exc.value) == (
        f"{brats_copy / 'labelsTs' / 'brats_002.nii.gz'}: expected the label of test case "
        "brats_002 (--split test scores imagesTs against labelsTs), found none (1 of 2 test "
        "cases unlabelled)"
    )
    lab = nib.load(str(brats_copy / "labelsTs" / "brats_003.nii.gz"))
    bad = np.asarray(lab.dataobj).astype(np.float32)
    bad[0, 0, 0] = 9  # undeclared label in a test label: check-data reads labelsTs too
    nib.save(nib.Nifti1Image(bad, lab.affine), str(brats_copy / "labelsTs" / "brats_003.nii.gz"))
    assert main(["check-data", str(brats_copy)]) == 2
    assert "brats_003" in capsys.readouterr().out
