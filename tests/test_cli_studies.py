"""The configs of the paper's pre-training study (Table 5) and decoder study (Table 13):
`medtune params --all` counts each folder; every config is Med-Tuning on a ViT-B."""

from __future__ import annotations

import json
from pathlib import Path

from medtune.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "brats"
PRESETS = [
    "vit_b14_dinov2",
    "vit_b16",
    "vit_b16_clip",
    "vit_b16_mae",
    "vit_b16_mocov3",
    "vit_b16_sam",
]
DECODERS = ["setr_mla", "setr_naive", "setr_pup", "unetr", "upernet"]


def _rows(folder: str, capsys) -> dict[str, dict]:
    assert main(["params", "--all", str(CONFIGS / folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    return {Path(r["config"]).stem: r for r in rows}


def test_pretraining_study_configs(capsys):
    rows = _rows("pretraining", capsys)
    assert sorted(rows) == PRESETS
    for r in rows.values():
        assert r["method"] == "med_adapter"
        assert round(r["inserted"] / 1e6, 3) == 2.846  # 12 Med-Adapters at C = 768, C' = 128
    assert (round(rows["vit_b16"]["total"] / 1e6, 3), round(rows["vit_b16"]["tuned"] / 1e6, 3)) == (
        103.695,
        17.853,
    )  # the paper's ViT-B/16 + UPerNet Med-Tuning


def test_decoder_study_configs(capsys):
    rows = _rows("decoders", capsys)
    assert sorted(rows) == DECODERS
    tuned = {name: r["tuned"] - r["inserted"] for name, r in rows.items()}  # decoder + extras
    assert round(tuned["upernet"] / 1e6, 3) == 15.007
    assert len(set(tuned.values())) == len(DECODERS)  # each decoder sized on its own
    assert (
        tuned["setr_naive"]
        < tuned["unetr"]
        < tuned["setr_pup"]
        < tuned["setr_mla"]
        < tuned["upernet"]
    )
