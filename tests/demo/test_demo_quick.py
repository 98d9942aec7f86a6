"""`medtune demo --quick` runs end to end offline and writes the report and both figures."""

from __future__ import annotations

import re

from medtune.cli import main


def test_demo_quick_writes_report_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    report = (out / "report.md").read_text()
    for method in ("med_adapter", "head", "full", "otsu_flair"):
        assert re.search(rf"^\| {method}", report, re.M), f"{method} row missing"
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    for col in (
        "tuned params",
        "Dice WT",
        "Dice TC",
        "Dice ET",
        "HD95 ET (mm)",
        "train time (s)",
        "peak memory (GB)",
    ):
        assert col in header
    rows = {
        line.split("|")[1].strip(): line
        for line in report.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    # Med-Tuning trains fewer parameters than full fine-tuning, more than head-only
    tuned = {
        m: int(rows[m].split("|")[2].strip().replace(",", ""))
        for m in ("med_adapter", "head", "full")
    }
    assert tuned["head"] < tuned["med_adapter"] < tuned["full"]
    for png in ("dice_vs_params.png", "overlay.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # slice-context section: a Dice number per label for each method, and the ambiguity figure
    ctx = report[report.index("## Slice context") :]
    assert re.search(r"balanced accuracy \d\.\d\d .*with \d\.\d\d", ctx)
    for method in ("med_adapter", "head", "full"):
        row = re.search(rf"^\| {method} \|(.*)$", ctx, re.M)
        assert row, f"{method} row missing from the slice-context table"
        dice = re.findall(r"\| (\d\.\d{3})", row.group(0))
        assert len(dice) == 4 and all(0 <= float(d) <= 1 for d in dice), row.group(0)
    assert "## Stage times" in report and "context train head s0" in report
    preds = list((out / "prediction").glob("*.nii.gz"))
    assert len(preds) == 1
    assert "| med_adapter" in capsys.readouterr().out  # the table also goes to stdout
