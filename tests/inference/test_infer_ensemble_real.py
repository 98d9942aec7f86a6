"""Two real 1-epoch runs on phantoms (folds 0 and 1 of 2): their ensemble predicts the mean of
their probabilities and is evaluated on the test cases; mismatched runs and splits that overlap
training are refused; a DICOM case predicts as the same volume given as NIfTI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import LPS, write_series
from infer_helpers import SHAPE, run_config, save

from medtune.cli import main
from medtune.data.phantoms import write_phantoms
from medtune.training.config import config_from_dict

TEST_CASE = "brats_003"


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(dataset with 3 training cases and 1 labelled test case, [run of fold 0, run of fold 1])."""
    from medtune.training.run import train_run

    tmp = tmp_path_factory.mktemp("ensemble")
    root = write_phantoms("brats", 4, tmp / "ds", seed=11, shape=SHAPE)
    for sub, dst in (("imagesTr", "imagesTs"), ("labelsTr", "labelsTs")):
        (root / dst).mkdir()
        for f in (root / sub).glob(f"{TEST_CASE}*"):
            f.rename(root / dst / f.name)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    runs = []
    for fold in (0, 1):
        data = run_config(root, tmp / "cache")
        data["data"].update(batch_size=1, num_folds=2, fold=fold)
        data["train"].update(
            max_epochs=1, warmup_epochs=0, steps_per_epoch=2, val_every=1, progress_bar=False,
            log_every_n_steps=1, lr=0.005,
        )  # fmt: skip
        train_run(config_from_dict(data), tmp / f"fold{fold}")
        runs.append(tmp / f"fold{fold}")
    return root, runs


def _error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def _probs(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def test_ensemble_predicts_the_mean_and_evaluates_test_cases(folds, tmp_path, capsys):
    root, (run0, run1) = folds
    inp = root / "imagesTs"
    outs = {}
    for name, runs in (("r0", [run0]), ("r1", [run1]), ("ens", [run0, run1])):
        args = ["predict", *map(str, runs), "--input", str(inp), "--out", str(tmp_path / name)]
        assert main([*args, "--save-probabilities", "--device", "cpu"]) == 0
        outs[name] = tmp_path / name
    p0, p1 = (_probs(outs[n] / f"{TEST_CASE}_probs.nii.gz") for n in ("r0", "r1"))
    pe = _probs(outs["ens"] / f"{TEST_CASE}_probs.nii.gz")
    assert not np.allclose(p0, p1, atol=1e-3)  # two different models
    np.testing.assert_allclose(pe, (p0 + p1) / 2, atol=1e-6)
    lab = nib.load(str(outs["ens"] / f"{TEST_CASE}.nii.gz"))
    ref = nib.load(str(inp / f"{TEST_CASE}_0000.nii.gz"))
    assert lab.shape == ref.shape and np.array_equal(lab.affine, ref.affine)
    lut = np.array([0, 1, 2, 4])  # class index -> BraTS source label (ET written as 4)
    np.testing.assert_array_equal(np.asarray(lab.dataobj), lut[pe.argmax(-1)])

    capsys.readouterr()
    assert main(["evaluate", str(run0), str(run1), "--data", str(root), "--device", "cpu"]) == 0
    summary = json.loads((run0.parent / "eval_ensemble_test" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["fold"] is None and summary["n_cases"] == 1
    assert summary["runs"] == [str(run0.resolve()), str(run1.resolve())]
    assert summary["window"] == [[8, 32, 32], [8, 32, 32]]
    assert "ensemble of 2 runs" in capsys.readouterr().err


def test_ensemble_refusals_are_one_line(folds, tmp_path, capsys):
    root, (run0, run1) = folds
    # fold 0's validation cases are fold 1's training cases
    assert main(["evaluate", str(run0), str(run1), "--data", str(root), "--split", "val"]) == 2
    line = _error(capsys)
    val0 = json.loads((run0 / "train_summary.json").read_text())["val_cases"]
    assert f"--split val: expected cases that no run trained on, found {len(val0)} of the " in line
    assert f"training cases of {run1} (e.g. {val0[0]}" in line
    assert line.endswith(
        "score an ensemble of folds on the test cases (imagesTs + labelsTs, --split test)"
    )

    other = tmp_path / "other"
    shutil.copytree(run1, other)
    cfg_path = other / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["extra"]["dataset"]["labels"] = {"background": 0, "NCR": 1, "edema": 2, "ET": 3}
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "o"
    args = ["predict", str(run0), str(other), "--input", str(root / "imagesTs"), "--out", str(out)]
    assert main(args) == 2
    line = _error(capsys)
    assert f"{other}: expected a run of the data of {run0} (same label set: " in line
    assert "'edema': 2" in line and not out.exists()
    assert main(["evaluate", str(run0), str(other), "--data", str(root)]) == 2
    assert "(same label set: " in _error(capsys)


def test_dicom_case_predicts_as_its_nifti(folds, tmp_path):
    """The test case written as 4 DICOM series (sub-folders by channel name and by index)
    predicts exactly as the same volumes written as NIfTI, in the series' geometry."""
    root, (run0, _) = folds
    names = ["FLAIR", "0001", "t1ce", "0003"]
    positions = None
    for c in range(4):
        img = nib.load(str(root / "imagesTs" / f"{TEST_CASE}_{c:04d}.nii.gz"))
        v = np.asarray(img.dataobj, dtype=np.float64)
        q = np.rint(v * (30000.0 / max(np.abs(v).max(), 1e-6)))  # whole numbers, as DICOM stores
        save(q.astype(np.float32), img.affine, tmp_path / "nifti" / f"{TEST_CASE}_{c:04d}.nii.gz")
        positions = write_series(tmp_path / "dicom" / TEST_CASE / names[c], q, img.affine)
    for kind in ("nifti", "dicom"):
        args = [
            "predict",
            str(run0),
            "--input",
            str(tmp_path / kind),
            "--out",
            str(tmp_path / f"o_{kind}"),
        ]
        assert main([*args, "--device", "cpu", "--save-probabilities"]) == 0
    from_nifti = nib.load(str(tmp_path / "o_nifti" / f"{TEST_CASE}.nii.gz"))
    from_dicom = nib.load(str(tmp_path / "o_dicom" / f"{TEST_CASE}.nii.gz"))
    assert from_dicom.shape == from_nifti.shape
    for k, pos in enumerate(positions):  # slice k where its ImagePositionPatient says
        np.testing.assert_allclose(
            from_dicom.affine @ [0, 0, k, 1], [*(LPS[:3, :3] @ pos), 1], atol=1e-6
        )
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj))
    probs = [
        _probs(tmp_path / f"o_{kind}" / f"{TEST_CASE}_probs.nii.gz") for kind in ("nifti", "dicom")
    ]
    assert probs[0].std() > 0.01  # a real, varying prediction, not a constant map
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)
