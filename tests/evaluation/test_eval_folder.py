"""`medtune evaluate-folder` end to end on small NIfTI files written here: scores, spacing from
the reference headers, HD95 definitions, and one line per missing or mismatched case."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from medtune.cli import main
from medtune.evaluation.metrics import compute_case_metrics

SPACING = (0.8, 0.8, 3.0)
SHAPE = (40, 36, 12)
REGIONS = {"kidney": [1, 2], "tumour": [2]}


def _affine(spacing=SPACING, angle=0.2, origin=(-12.0, 30.0, 5.5)):
    """An oblique affine with `spacing` mm voxels (a rotation about the last axis)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rot * np.asarray(spacing)
    out[:3, 3] = origin
    return out


def _save(arr, path, affine=None, dtype=np.uint8):
    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), _affine() if affine is None else affine)
    nib.save(img, str(path))
    return path


def _kidney(shift=(0, 0, 0), tumour_r=3.0):
    """Label map: an ellipsoidal kidney (1) holding a ball tumour (2), moved by `shift` voxels."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    c = [16 + shift[0] * SPACING[0], 14 + shift[1] * SPACING[1], 18 + shift[2] * SPACING[2]]
    lab = np.zeros(SHAPE, np.uint8)
    lab[((z - c[0]) / 9) ** 2 + ((y - c[1]) / 6) ** 2 + ((x - c[2]) / 12) ** 2 <= 1] = 1
    lab[(z - c[0] - 3) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= tumour_r**2] = 2
    return lab


def _dataset_json(path):
    path.write_text(
        json.dumps(
            {
                "name": "KidneyToy",
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "kidney": 1, "tumour": 2},
                "numTraining": 3,
                "file_ending": ".nii.gz",
                "medtune": {"regions": REGIONS},
            }
        )
    )
    return path


@pytest.fixture()
def folders(tmp_path):
    """dataset.json, references and predictions of three cases (case_b's prediction as .nii,
    with an outlier blob, so that the two HD95 definitions differ)."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    outlier = _kidney((0, 2, 1), tumour_r=4.0)
    outlier[35:39, 29:34, 0:2] = 1  # a false positive far from the kidney
    cases = {
        "case_a": (_kidney(), _kidney((1, 0, 0))),
        "case_b": (_kidney(), outlier),
        "case_c": (_kidney(tumour_r=2.0), np.where(_kidney() == 2, 1, _kidney())),  # no tumour
    }
    for cid, (gt, pr) in cases.items():
        _save(gt, ref / f"{cid}.nii.gz")
        _save(pr, pred / (f"{cid}.nii" if cid == "case_b" else f"{cid}.nii.gz"), dtype=np.int16)
    return _dataset_json(tmp_path / "dataset.json"), pred, ref, cases


def test_scores_every_case_with_the_metric_code_of_evaluate(folders, tmp_path, capsys):
    ds, pred, ref, cases = folders
    out = tmp_path / "report"
    assert (
        main(["evaluate-folder", str(pred), str(ref), "--dataset", str(ds), "--out", str(out)]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.startswith("| region | dice | hd95 directed (mm) | nsd @ 1 mm |")
    assert "| kidney |" in captured.out and "| mean |" in captured.out
    rows = list(csv.DictReader((out / "per_case.csv").read_text().splitlines()))
    assert [r["case_id"] for r in rows] == ["case_a", "case_b", "case_c"]
    for row in rows:
        gt, pr = cases[row["case_id"]]
        want = compute_case_metrics(pr, gt, REGIONS, SPACING, 1.0, mean_region="mean")
        for region, metrics in want.items():
            for metric, value in metrics.items():
                assert float(row[f"{region}/{metric}"]) == pytest.approx(value, abs=1e-6)
    # (headers store the affine in float32: 0.8 mm reads back as 0.800000002)
    # spacing came from the headers: in voxel units case_a's HD95 would be 1, not 0.8 mm
    assert float(rows[0]["kidney/hd95"]) == pytest.approx(0.8)
    assert float(rows[2]["tumour/hd95"]) == pytest.approx(
        math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING)))
    )  # missed tumour: the empty-mask policy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hd95"] == "directed" and summary["nsd_tolerance_mm"] == 1.0
    assert summary["n_cases"] == 3 and summary["n_skipped"] == 0
    assert "- hd95: directed" in (out / "summary.md").read_text()


def test_json_pooled_and_tolerance(folders, capsys):
    ds, pred, ref, cases = folders
    args = ["evaluate-folder", str(pred), str(ref), "--dataset", str(ds), "--json"]
    assert main([*args, "--hd95", "pooled", "--nsd-tolerance", "2"]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds only JSON
    assert result["hd95"] == "pooled" and result["nsd_tolerance_mm"] == 2.0
    gt, pr = cases["case_b"]
    want = compute_case_metrics(pr, gt, REGIONS, SPACING, 2.0, hd95="pooled", mean_region="mean")
    row = next(r for r in result["per_case"] if r["case_id"] == "case_b")
    assert row["tumour/hd95"] == pytest.approx(want["tumour"]["hd95"], abs=1e-6)
    assert row["kidney/nsd"] == pytest.approx(want["kidney"]["nsd"], abs=1e-6)
    directed = compute_case_metrics(pr, gt, REGIONS, SPACING, 2.0)["kidney"]["hd95"]
    assert row["kidney/hd95"] < directed - 5.0  # the flag reached the metric


@pytest.fixture()
def broken(folders):
    """Next to the three good cases, one case per kind of problem."""
    ds, pred, ref, _ = folders
    gt = _kidney()
    for cid in ("no_pred", "shape", "affine", "nan", "label5"):
        _save(gt, ref / f"{cid}.nii.gz")
    _save(gt[:, :, :-1], pred / "shape.nii.gz")
    _save(gt, pred / "affine.nii.gz", affine=_affine(origin=(-12.0, 30.0, 6.5)))
    with_nan = gt.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    _save(with_nan, pred / "nan.nii.gz", dtype=np.float32)
    bad = gt.copy()
    bad[bad == 2] = 5
    _save(bad, pred / "label5.nii.gz")
    _save(gt, pred / "no_ref.nii.gz")
    return ds, pred, ref


EXPECTED = {
    "affine": "expected the affine of",
    "label5": "expected the label values of dataset.json [0, 1, 2], found [5]",
    "nan": "expected finite label values, found 1 NaN or Inf voxel(s)",
    "no_pred": "expected a prediction",
    "no_ref": "expected a reference",
    "shape": "expected the shape of",
}


def test_mismatched_cases_are_one_line_each_and_exit_2(broken, tmp_path, capsys):
    ds, pred, ref = broken
    out = tmp_path / "report"
    args = ["evaluate-folder", str(pred), str(ref), "--dataset", str(ds), "--out", str(out)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    problem_lines = [ln for ln in lines if ln.split(":", 1)[0] in EXPECTED]
    assert len(problem_lines) == len(EXPECTED)
    for line in problem_lines:
        assert EXPECTED[line.split(":", 1)[0]] in line
    assert lines[-1].startswith("medtune evaluate-folder: error: 6 case(s) missing or mismatched")
    assert "--skip-missing" in lines[-1]
    assert not out.exists()  # nothing written


def test_skip_missing_scores_the_rest_and_reports_what_it_skipped(broken, tmp_path, capsys):
    ds, pred, ref = broken
    out = tmp_path / "report"
    args = ["evaluate-folder", str(pred), str(ref), "--dataset", str(ds), "--out", str(out)]
    assert main([*args, "--skip-missing"]) == 0
    err = capsys.readouterr().err
    assert all(f"skipped {cid}:" in err for cid in EXPECTED)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["n_skipped"] == 6
    assert sorted(summary["skipped"]) == sorted(EXPECTED)
    assert all(EXPECTED[c] in line for c, line in summary["skipped"].items())
    rows = list(csv.DictReader((out / "per_case.csv").read_text().splitlines()))
    assert [r["case_id"] for r in rows] == ["case_a", "case_b", "case_c"]
    md = (out / "summary.md").read_text()
    assert "- n_skipped: 6\n- skipped:\n  - affine: affine: " in md


def test_bad_arguments_exit_2_with_one_line(folders, tmp_path, capsys):
    ds, pred, ref, _ = folders
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"bg": "zero"}}))
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, needle in [
        ([str(pred), str(ref), "--dataset", str(bad_json)], "bad.json: expected"),
        ([str(pred), str(ref), "--dataset", str(tmp_path / "nope.json")], "nope.json"),
        ([str(pred), str(empty), "--dataset", str(ds)], "expected reference label files"),
        ([str(tmp_path / "nope"), str(ref), "--dataset", str(ds)], "PRED_DIR"),
        ([str(empty), str(ref), "--dataset", str(ds), "--skip-missing"], "found none (3 skipped)"),
        ([str(pred), str(ref), "--dataset", str(ds), "--nsd-tolerance", "-1"], "--nsd-tolerance"),
    ]:
        assert main(["evaluate-folder", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1], (argv, err)
        assert err[-1].startswith("medtune evaluate-folder: error:")


def test_source_convention_gets_a_hint_and_scores_with_pred_labels_source(tmp_path, capsys):
    # BraTS converted to nnU-Net labels 0..3 keeps ET = 4 as its source convention
    ds = tmp_path / "dataset.json"
    labels = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    ds.write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR"},
                "labels": labels,
                "numTraining": 1,
                "file_ending": ".nii.gz",
                "medtune": {"source_labels": {"3": 4}},
            }
        )
    )
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    gt = np.where(_kidney() == 2, 3, _kidney())  # NCR 1 holding an ET 3, in the dataset's labels
    _save(gt, tmp_path / "ref" / "b1.nii.gz")
    _save(np.where(gt == 3, 4, gt), tmp_path / "pred" / "b1.nii.gz")
    argv = [str(tmp_path / "pred"), str(tmp_path / "ref"), "--dataset", str(ds)]
    assert main(["evaluate-folder", *argv]) == 2
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("b1:"))
    assert "found [4] (values of the source convention: pass --pred-labels source" in line

    # what `medtune predict` writes (ET 4) scores as the same map in the dataset's labels (ET 3)
    out = tmp_path / "scores"
    assert main(["evaluate-folder", *argv, "--pred-labels", "source", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pred_labels"] == "source" and summary["ref_labels"] == "dataset"
    with open(out / "per_case.csv") as f:
        row = next(csv.DictReader(f))
    assert [float(row[f"{r}/dice"]) for r in ("NCR", "ED", "ET")] == [1.0, 1.0, 1.0]

    # a dataset-convention prediction read as `source` is refused with the opposite hint
    _save(gt, tmp_path / "pred" / "b1.nii.gz")
    _save(np.where(gt == 3, 4, gt), tmp_path / "ref" / "b1.nii.gz")
    assert main(["evaluate-folder", *argv, "--pred-labels", "source"]) == 2
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("b1:"))
    assert "expected the label values of the source convention of dataset.json [0, 1, 2, 4]" in line
    assert "pass --pred-labels dataset" in line
    # both folders in the source convention (e.g. scoring against BraTS' own seg files)
    _save(np.where(gt == 3, 4, gt), tmp_path / "pred" / "b1.nii.gz")
    assert (
        main(["evaluate-folder", *argv, "--pred-labels", "source", "--ref-labels", "source"]) == 0
    )
