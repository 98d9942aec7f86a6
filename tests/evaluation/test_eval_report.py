"""Summaries and report files: statistics, atomic writes, files that parse back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medtune.core.errors import MedtuneInputError
from medtune.evaluation.metrics import compute_case_metrics
from medtune.evaluation.report import case_row, markdown_table, summarize, write_reports


def rows():
    dice = [0.9, 0.8, 0.7, 0.2]
    hd = [1.0, 2.0, 3.0, 373.13]
    return [
        {
            "case_id": f"case_{i:03d}",
            "ET/dice": d,
            "ET/hd95": h,
            "ET/nsd": d,
            "WT/dice": 1.0,
            "WT/hd95": 0.0,
            "WT/nsd": 1.0,
        }
        for i, (d, h) in enumerate(zip(dice, hd))
    ]


def test_summarize_statistics():
    s = summarize(rows())
    assert s["n_cases"] == 4
    assert list(s["metrics"]) == ["ET", "WT"]
    et = s["metrics"]["ET"]["dice"]
    assert et["mean"] == pytest.approx(0.65)
    assert et["std"] == pytest.approx(np.std([0.9, 0.8, 0.7, 0.2], ddof=1))
    assert et["median"] == pytest.approx(0.75)
    assert et["n"] == 4
    assert s["metrics"]["ET"]["hd95"]["median"] == pytest.approx(2.5)
    assert s["metrics"]["WT"]["hd95"] == {"mean": 0.0, "std": 0.0, "median": 0.0, "n": 4}
    one = summarize(rows()[:1])
    assert one["metrics"]["ET"]["dice"]["std"] == 0.0


def test_summarize_refuses_missing_or_non_finite_values():
    bad = rows()
    del bad[2]["ET/nsd"]
    with pytest.raises(MedtuneInputError, match=r"case case_002.*missing \['ET/nsd'\]"):
        summarize(bad)
    bad = rows()
    bad[1]["WT/hd95"] = float("nan")
    with pytest.raises(MedtuneInputError, match="case case_001: WT/hd95 must be a finite number"):
        summarize(bad)
    with pytest.raises(MedtuneInputError, match="at least one case"):
        summarize([])


def test_reports_are_written_and_parse_back(tmp_path):
    data = rows()
    data[0]["note"] = "extra column"
    summary = summarize(data)
    summary["tta"] = "flip8"
    out = tmp_path / "eval" / "fold0"
    paths = write_reports(data, summary, out)
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.json", "summary.md"]

    with open(paths["per_case"], newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["case_id"] for r in back] == [r["case_id"] for r in data]
    assert back[0]["note"] == "extra column" and back[1]["note"] == ""
    for orig, parsed in zip(data, back):
        for k, v in orig.items():
            if "/" in k:
                assert float(parsed[k]) == v  # full precision

    assert json.loads(paths["summary_json"].read_text()) == summary

    md = paths["summary_md"].read_text()
    assert "| region | dice | hd95 (mm) | nsd |" in md
    assert "| ET | 0.6500 ± " in md and "(median 0.7500)" in md
    assert "(median 2.50)" in md
    assert "- tta: flip8" in md

    summary.update(hd95="pooled", nsd_tolerance_mm=2.0)
    assert "| region | dice | hd95 pooled (mm) | nsd @ 2 mm |" in markdown_table(summary)

    write_reports(data[:2], summarize(data[:2]), out)  # rewrite in place
    assert json.loads(paths["summary_json"].read_text())["n_cases"] == 2


def test_case_rows_from_metrics_round_trip(tmp_path):
    gt = np.zeros((16, 16, 16), np.uint8)
    gt[4:10, 4:10, 4:10] = 1
    per_case = [
        case_row(
            f"c{i}",
            compute_case_metrics(np.roll(gt, i, 0), gt, {"fg": [1]}, (1, 1, 1), mean_region="mean"),
        )
        for i in range(3)
    ]
    assert list(per_case[0]) == [
        "case_id",
        "fg/dice",
        "fg/hd95",
        "fg/nsd",
        "mean/dice",
        "mean/hd95",
        "mean/nsd",
    ]
    s = summarize(per_case)
    assert s["metrics"]["fg"]["dice"]["n"] == 3
    assert s["metrics"]["fg"]["dice"]["median"] == pytest.approx(2 * 180 / 432)
    assert markdown_table(s).count("\n") == 4  # header, rule, fg, mean
    write_reports(per_case, s, tmp_path)
    assert (tmp_path / "per_case.csv").read_text().count("\n") == 4


def test_write_reports_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(MedtuneInputError, match="expected a folder, found a file"):
        write_reports(rows(), summarize(rows()), target)
