"""`medtune evaluate` and `medtune predict` on a tiny run directory (untrained tiny ViT with
Med-Adapters on BraTS-like phantoms): reports, geometry, refusals, exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medtune.cli import main
from medtune.data.dataset import load_dataset
from medtune.data.splits import make_splits


@pytest.mark.parametrize("cmd", ["evaluate", "predict"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "-h"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    flags = ["--data", "--fold", "--split", "--tta", "--postprocess", "--out", "--hd95"]
    if cmd == "predict":
        flags = ["--input", "--out", "--device", "--tta", "--save-probabilities", "--overwrite"]
    for flag in flags:
        assert flag in text


def test_evaluate_writes_reports(tiny_run, phantom_data, capsys):
    assert main(["evaluate", str(tiny_run), "--data", str(phantom_data)]) == 0
    out = tiny_run / "eval_val_fold0"
    for name in ("per_case.csv", "summary.json", "summary.md"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["WT", "TC", "ET", "mean"]
    for region in summary["metrics"].values():
        assert set(region) == {"dice", "hd95", "nsd"}
        assert 0.0 <= region["dice"]["mean"] <= 1.0 and region["hd95"]["mean"] >= 0.0
    ids = [c.case_id for c in load_dataset(phantom_data).cases]
    val = make_splits(ids, 3, 12345)[0]["val"]  # the run's folds (num_folds 3, default seed)
    rows = list(csv.DictReader((out / "per_case.csv").read_text().splitlines()))
    assert [r["case_id"] for r in rows] == val
    assert summary["split"] == "val" and summary["fold"] == 0 and summary["window"] == [8, 32, 32]
    assert summary["hd95"] == "directed" and summary["nsd_tolerance_mm"] == 1.0
    stdout = capsys.readouterr().out
    assert stdout.startswith("| region | dice | hd95 directed (mm) | nsd @ 1 mm |")
    assert "| WT |" in stdout and "| mean |" in stdout


def test_evaluate_all_cases_to_out(tiny_run, phantom_data, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(
        [
            "evaluate",
            str(tiny_run),
            "--data",
            str(phantom_data),
            "--split",
            "all",
            "--out",
            str(out),
            "--hd95",
            "pooled",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["hd95"] == "pooled"
    assert "hd95 pooled" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--data", str(phantom_data)]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.fixture()
def case_inputs(phantom_data, tmp_path):
    """The four channel files of one phantom case, copied into an input folder."""
    inp = tmp_path / "input"
    inp.mkdir()
    for f in sorted((phantom_data / "imagesTr").glob("brats_001_*.nii.gz")):
        shutil.copy(f, inp / f.name)
    return inp


def test_predict_round_trip_and_refusals(tiny_run, case_inputs, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(out)]) == 0
    pred_path = out / "brats_001.nii.gz"
    assert capsys.readouterr().out.strip() == str(pred_path)
    pred, ref = nib.load(str(pred_path)), nib.load(str(case_inputs / "brats_001_0000.nii.gz"))
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    assert abs(np.linalg.det(ref.affine[:3, :3])) > 0 and not np.allclose(
        ref.affine[:3, :3], np.diag(np.diag(ref.affine[:3, :3]))
    )  # the phantom's affine is oblique
    values = set(np.unique(np.asarray(pred.dataobj)).tolist())
    assert values <= {0, 1, 2, 4} and 3 not in values  # ET in the source convention (4)
    first = pred_path.read_bytes()

    # existing output: refused without --overwrite, replaced with it
    args = ["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "brats_001.nii.gz" in err and "\n" not in err
    assert main([*args, "--overwrite"]) == 0
    assert np.array_equal(np.asarray(nib.load(str(pred_path)).dataobj), np.asarray(pred.dataobj))
    assert len(first) > 0

    # OUT == input folder (also through another spelling of the path): refused, nothing written
    before = sorted(p.name for p in case_inputs.iterdir())
    for target in (case_inputs, case_inputs / ".." / case_inputs.name):
        assert (
            main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(target)]) == 2
        )
        assert "input folder" in capsys.readouterr().err
    assert sorted(p.name for p in case_inputs.iterdir()) == before


def test_predict_4d_from_adapter_folder(tiny_run, case_inputs, tmp_path):
    """A 4D NIfTI, predicted from the adapter folder alone (the random backbone rebuilt from the
    seed), gives the same labels as the channel files predicted from the run directory."""
    files = sorted(case_inputs.glob("*.nii.gz"))
    ref = nib.load(str(files[0]))
    four_d = np.stack([np.asarray(nib.load(str(f)).dataobj) for f in files], axis=-1)
    img = nib.Nifti1Image(four_d, ref.affine, header=ref.header)
    (tmp_path / "in4d").mkdir()
    nib.save(img, str(tmp_path / "in4d" / "whole.nii.gz"))
    adapter = tmp_path / "adapter_copy"
    shutil.copytree(tiny_run / "adapter", adapter)  # outside the run: no config.yaml beside it
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["extra"]["seed"] = 7
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    a = tmp_path / "a"
    assert main(["predict", str(adapter), "--input", str(tmp_path / "in4d"), "--out", str(a)]) == 0
    b = tmp_path / "b"
    assert main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(b)]) == 0
    pa, pb = nib.load(str(a / "whole.nii.gz")), nib.load(str(b / "brats_001.nii.gz"))
    assert pa.shape == ref.shape and np.array_equal(pa.affine, ref.affine)
    np.testing.assert_array_equal(np.asarray(pa.dataobj), np.asarray(pb.dataobj))


def test_predict_bad_inputs_exit_2(tiny_run, case_inputs, tmp_path, capsys):
    (case_inputs / "brats_001_0002.nii.gz").unlink()
    out = tmp_path / "o"
    assert main(["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "brats_001_0002.nii.gz" in err and "channel 2 (T1ce)" in err
    assert not out.exists()
    assert main(["predict", str(tmp_path), "--input", str(case_inputs), "--out", str(out)]) == 2
    assert "adapter folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_predict_cuda_missing_is_clear(tiny_run, case_inputs, tmp_path, capsys):
    args = ["predict", str(tiny_run), "--input", str(case_inputs), "--out", str(tmp_path / "o")]
    assert main([*args, "--device", "cuda"]) == 2
    assert "--device cuda: expected a CUDA GPU, found none" in capsys.readouterr().err
