"""evaluate: case selection, BraTS post-processing, metrics in the label file's grid, reports."""

from __future__ import annotations

import csv
import json

import pytest
from infer_helpers import PositiveIsClass, brats_props, write_hand_dataset

from medtune.core.errors import MedtuneInputError
from medtune.data.dataset import load_dataset
from medtune.evaluation import evaluate_predictor, select_cases
from medtune.evaluation.metrics import image_diagonal_mm
from medtune.inference import Predictor


def et_predictor() -> Predictor:
    """ET (class 3) where the normalised image is bright, edema (2) on the rest of the tissue."""
    return Predictor(
        PositiveIsClass(cls=3, low=2, thr=1.0), brats_props(), (8, 16, 16), overlap=0.5
    )


def test_brats_postprocess_changes_small_et(tmp_path):
    root = write_hand_dataset(tmp_path / "ds")
    plain = evaluate_predictor(et_predictor(), root, out=tmp_path / "plain", progress=False)
    m = plain["metrics"]
    assert list(m) == ["WT", "TC", "ET", "mean"]
    assert m["ET"]["dice"]["mean"] == 1.0 and m["WT"]["dice"]["mean"] == 1.0
    assert m["ET"]["hd95"]["mean"] == 0.0

    pp = evaluate_predictor(
        et_predictor(), root, out=tmp_path / "pp", postprocess="brats", progress=False
    )
    m = pp["metrics"]
    assert pp["postprocess"] == "brats"
    assert m["ET"]["dice"]["mean"] == 0.0  # 27 ET voxels < 500 became NCR: ET missed
    diag = image_diagonal_mm((20, 24, 14), (0.9, 1.3, 2.7))  # the label file's grid, in mm
    assert m["ET"]["hd95"]["mean"] == pytest.approx(diag, rel=1e-6)
    assert m["TC"]["dice"]["mean"] == 1.0  # NCR and ET are both tumour core
    rows = list(csv.DictReader((tmp_path / "pp" / "per_case.csv").read_text().splitlines()))
    assert rows[0]["case_id"] == "case1" and int(rows[0]["et_relabelled_voxels"]) == 27
    saved = json.loads((tmp_path / "pp" / "summary.json").read_text())
    assert saved["metrics"]["ET"]["dice"]["mean"] == 0.0 and saved["n_cases"] == 1
    assert "| ET |" in (tmp_path / "pp" / "summary.md").read_text()


def test_postprocess_needs_declared_labels(tmp_path):
    root = write_hand_dataset(tmp_path / "ds", with_et_convention=False)
    with pytest.raises(MedtuneInputError, match="et_label.*netc_label.*found et_label=None"):
        evaluate_predictor(et_predictor(), root, postprocess="brats", progress=False)
    with pytest.raises(MedtuneInputError, match="--postprocess: expected one of brats"):
        evaluate_predictor(et_predictor(), root, postprocess="kits", progress=False)


def test_dataset_must_match_the_model(tmp_path):
    root = write_hand_dataset(tmp_path / "ds")
    four = Predictor(PositiveIsClass(), brats_props(("A", "B", "C", "D")), (8, 16, 16))
    with pytest.raises(MedtuneInputError, match="expects 4 channel"):
        evaluate_predictor(four, root, progress=False)


def test_select_cases_reads_splits_final(tmp_path, phantom_data):
    info = load_dataset(phantom_data)
    ids = [c.case_id for c in info.cases]
    assert select_cases(info, "all", 0) == ids
    made = select_cases(info, "val", 1, num_folds=3, split_seed=5)
    assert len(made) == 1 and made[0] in ids
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "splits_final.json").write_text(
        json.dumps([{"train": ids[1:], "val": ids[:1]}, {"train": ids[:1], "val": ids[1:]}])
    )
    assert select_cases(info, "val", 1, split_dirs=(folder,)) == ids[1:]
    assert select_cases(info, "train", 1, split_dirs=(folder,)) == ids[:1]
    with pytest.raises(MedtuneInputError, match=r"--fold: expected 0..1 .* found 2"):
        select_cases(info, "val", 2, split_dirs=(folder,))
    with pytest.raises(MedtuneInputError, match="--split"):
        select_cases(info, "test", 0)
