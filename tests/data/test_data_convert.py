import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.core.errors import MedtuneInputError
from medtune.data.cached import load_case
from medtune.data.check import check_dataset
from medtune.data.convert import convert
from medtune.data.dataset import load_dataset
from medtune.data.preprocess import preprocess_dataset

SHAPE = (6, 7, 5)
AFF = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nii(path: Path, arr, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=dtype), AFF), str(path))


def _seg(values):
    a = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):
        a[i, 0, 0] = v
    return a


def _brats_old(root: Path, ending=".nii.gz"):
    """BraTS 2020 layout with HGG/LGG folders, .nii files and case 355's misnamed label."""
    for grade, cid in (
        ("HGG", "BraTS20_Training_001"),
        ("LGG", "BraTS20_Training_002"),
        ("HGG", "BraTS20_Training_355"),
    ):
        d = root / grade / cid
        for i, m in enumerate(("flair", "t1", "t1ce", "t2")):
            _nii(d / f"{cid}_{m}{ending}", np.full(SHAPE, 10 * (i + 1)))
        seg_name = "W39_1998.09.19_Segm.nii" if cid.endswith("355") else f"{cid}_seg{ending}"
        _nii(d / seg_name, _seg([1, 2, 4]), np.uint8)
    d = root / "BraTS20_Validation_001"
    for m in ("flair", "t1", "t1ce", "t2"):
        _nii(d / f"BraTS20_Validation_001_{m}{ending}", np.ones(SHAPE))
    return root


def test_brats2020_maps_et_4_to_3_and_handles_case_355(tmp_path, capsys, tree_hash):
    src = _brats_old(tmp_path / "MICCAI_BraTS2020_TrainingData", ending=".nii")
    before = tree_hash(src)
    assert (
        main(["convert", "--format", "brats", "--src", str(src), "--out", str(tmp_path / "out")])
        == 0
    )
    assert "BraTS 2020" in capsys.readouterr().out
    assert tree_hash(src) == before  # source untouched
    info = load_dataset(tmp_path / "out")
    assert info.props.file_ending == ".nii"
    assert [c.case_id for c in info.cases] == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
        "BraTS20_Training_355",
    ]
    assert [c.case_id for c in info.test_cases] == ["BraTS20_Validation_001"]
    assert info.props.labels == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    assert info.props.regions == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert info.props.source_labels == {0: 0, 1: 1, 2: 2, 3: 4}
    assert info.props.et_label == 3 and info.props.netc_label == 1
    for c in info.cases:
        assert sorted(np.unique(np.asarray(nib.load(str(c.label)).dataobj)).tolist()) == [
            0,
            1,
            2,
            3,
        ]
        # channel order FLAIR, T1, T1ce, T2 regardless of the source's file order
        assert [int(np.asarray(nib.load(str(p)).dataobj).max()) for p in c.images] == [
            10,
            20,
            30,
            40,
        ]


def test_brats_link_symlinks_images(tmp_path):
    src = _brats_old(tmp_path / "BraTS2020")
    convert("brats", src, tmp_path / "out", link=True)
    img = tmp_path / "out/imagesTr/BraTS20_Training_001_0000.nii.gz"
    assert (
        img.is_symlink()
        and img.resolve()
        == (src / "HGG/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz").resolve()
    )
    assert not (tmp_path / "out/labelsTr/BraTS20_Training_001.nii.gz").is_symlink()  # remapped


def _brats_new(root: Path, labels):
    cid = "BraTS-GLI-00000-000"
    for m in ("t2f", "t1n", "t1c", "t2w"):
        _nii(root / cid / f"{cid}-{m}.nii.gz", np.ones(SHAPE))
    _nii(root / cid / f"{cid}-seg.nii.gz", _seg(labels), np.uint8)
    return root


def test_brats2023_keeps_labels(tmp_path):
    out = convert(
        "brats",
        _brats_new(tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", [1, 2, 3]),
        tmp_path / "out",
    )
    info = load_dataset(out)
    assert info.props.conventions["edition"] == "BraTS 2023" and info.props.labels == {
        "background": 0,
        "NETC": 1,
        "SNFH": 2,
        "ET": 3,
    }
    assert info.props.source_labels == {0: 0, 1: 1, 2: 2, 3: 3} and info.props.regions["TC"] == [
        1,
        3,
    ]


def test_brats2024_keeps_resection_cavity_4(tmp_path):
    out = convert(
        "brats", _brats_new(tmp_path / "BraTS2024-GLI-TrainingData", [1, 2, 3, 4]), tmp_path / "out"
    )
    info = load_dataset(out)
    assert (
        info.props.labels["RC"] == 4
        and info.props.regions["RC"] == [4]
        and info.props.regions["ET"] == [3]
    )
    lab = np.asarray(nib.load(str(info.cases[0].label)).dataobj)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2, 3, 4]


def test_brats2023_with_label_4_is_rejected_with_a_hint(tmp_path, capsys):
    src = _brats_new(tmp_path / "BraTS2023", [1, 4])
    assert (
        main(["convert", "--format", "brats", "--src", str(src), "--out", str(tmp_path / "out")])
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith("medtune convert: error: ")
    assert "found [0, 1, 4]" in err[0] and "2024" in err[0]


def _kits(root: Path, cases, seg_name="segmentation", instances=False, test_case=None):
    for n in cases:
        d = root / f"case_{n:05d}"
        _nii(d / "imaging.nii.gz", np.full(SHAPE, -1000))
        _nii(
            d / f"{seg_name}.nii.gz",
            _seg([1, 2] + ([3] if seg_name != "segmentation" or instances else [])),
            np.uint8,
        )
        if instances:
            (d / "instances").mkdir()
    if test_case is not None:
        _nii(root / f"case_{test_case:05d}/imaging.nii.gz", np.zeros(SHAPE))
    return root


@pytest.mark.parametrize(
    "kw, edition, regions",
    [
        (dict(cases=[0, 1], test_case=210), "KiTS19", {"kidney": [1, 2], "tumour": [2]}),
        (
            dict(cases=[0, 1], seg_name="aggregated_MAJ_seg"),
            "KiTS21",
            {"kidney": [1, 2, 3], "masses": [2, 3], "tumour": [2]},
        ),
        (
            dict(cases=[0, 400], instances=True),
            "KiTS23",
            {"kidney": [1, 2, 3], "masses": [2, 3], "tumour": [2]},
        ),
    ],
)
def test_kits_editions(tmp_path, kw, edition, regions):
    out = convert("kits", _kits(tmp_path / "data", **kw), tmp_path / "out")
    info = load_dataset(out)
    assert info.props.conventions["edition"] == edition and info.props.regions == regions
    assert info.props.channel_names == ["CT"] and info.props.modality == "ct"
    assert len(info.cases) == 2 and len(info.test_cases) == (1 if "test_case" in kw else 0)


def _msd(root: Path):
    root.mkdir(parents=True)
    training = []
    for i in (1, 2):
        _nii(
            root / f"imagesTr/BRATS_00{i}.nii.gz",
            np.stack([np.full(SHAPE, c + 1) for c in range(4)], -1),
        )
        _nii(root / f"labelsTr/BRATS_00{i}.nii.gz", _seg([1, 2, 3]), np.uint8)
        training.append(
            {"image": f"./imagesTr/BRATS_00{i}.nii.gz", "label": f"./labelsTr/BRATS_00{i}.nii.gz"}
        )
    _nii(
        root / "imagesTr/._BRATS_001.nii.gz", np.zeros(SHAPE)
    )  # macOS resource fork in the archive
    ds = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "numTraining": 2,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(ds))
    return root


def test_msd_read_in_place_and_converted(tmp_path):
    src = _msd(tmp_path / "Task01_BrainTumour")
    info = load_dataset(src)
    assert info.layout == "msd" and info.cases[0].is_4d and len(info.cases) == 2
    assert check_dataset(src)[1] == []
    img, lab, _ = load_case(preprocess_dataset(src, tmp_path / "cache"), "BRATS_001")
    assert img.shape == (4, SHAPE[2], SHAPE[0], SHAPE[1]) and lab.max() == 3
    assert info.props.labels == {
        "background": 0,
        "edema": 1,
        "non-enhancing tumor": 2,
        "enhancing tumour": 3,
    }
    out = convert("msd", src, tmp_path / "out")
    conv = load_dataset(out)
    assert conv.layout == "nnunet" and conv.props.channel_names == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert (
        conv.props.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
        and conv.props.et_label == 3
        and conv.props.netc_label == 2
    )
    assert [int(np.asarray(nib.load(str(p)).dataobj).max()) for p in conv.cases[0].images] == [
        1,
        2,
        3,
        4,
    ]


def test_convert_refuses_bad_paths(tmp_path):
    src = _brats_old(tmp_path / "src")
    with pytest.raises(MedtuneInputError, match="outside --src"):
        convert("brats", src, src / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    with pytest.raises(MedtuneInputError, match="new or empty folder"):
        convert("brats", src, tmp_path / "full")
    with pytest.raises(MedtuneInputError, match="expected KiTS case folders"):
        convert("kits", src, tmp_path / "o2")
