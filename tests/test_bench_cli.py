"""`medtune bench` end to end at tiny size on the CPU, its bad input, and the GPU suite's
`--tiny` rehearsal."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medtune.bench import RESULT_KEYS
from medtune.cli import main
from tiny import EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "test/vit_med_adapter",
    "model": copy.deepcopy(EXPERIMENT["model"]),  # the tiny ViT-UPerNet with Med-Adapters
    "data": {"crop_size": [8, 32, 32], "batch_size": 1},
    "train": {"seed": 0},
}
FAST = ["--steps", "1", "--warmup", "1", "--volume", "8", "32", "32"]


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_bench_json(cfg_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = main(
        ["bench", "--config", str(cfg_path), "--device", "cpu", "--json", "--out", str(out), *FAST]
    )
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert set(RESULT_KEYS) <= set(row)
    for key in ("step_s", "floor_s", "compare_step_s", "window_s", "volume_s", "volume_flip8_s"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert 0 < row["tuned"] < row["total"]
    assert row["peak_memory_gib"] >= 0 and row["device"] == "cpu"
    assert row["precision"] == "32-true" and row["compare"] == "head"
    assert row["step_over_floor"] == pytest.approx(row["step_s"] / row["floor_s"])
    # the floor's forward alone (no gradient) is part of it: its backward is the rest
    assert 0 < row["floor_forward_s"] < row["floor_s"]
    assert row["floor_backward_s"] == pytest.approx(row["floor_s"] - row["floor_forward_s"])
    assert row["step_over_compare"] == pytest.approx(row["step_s"] / row["compare_step_s"])
    assert row["step_min_s"] <= row["step_s"] <= row["step_max_s"]
    assert json.loads((out / "bench.json").read_text())["total"] == row["total"]
    assert (out / "bench.md").read_text().startswith("| config | method |")


def test_bench_markdown(cfg_path: Path, capsys):
    code = main(
        ["bench", "--config", str(cfg_path), "--device", "cpu", "--compare", "none", "--no-tta"]
        + ["--precision", "bf16", *FAST]
    )
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| config | method | precision |")
    assert "| med_adapter | bf16-mixed | 1 x 8x32x32 |" in lines[2]
    assert lines[2].count("| - |") >= 2  # step/compare and flip8 not measured


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--steps", "0"], "--steps 0: expected at least 1 step, found 0"),
        (["--crop", "8", "32", "48"], "--crop 8 32 48: expected square slices"),
        (["--crop", "8", "30", "30"], "--crop 8 30 30: "),
        (["--volume", "4", "32", "32"], "--volume 4 32 32: expected at least the window 8x32x32"),
        (["--device", "cuda"], "--device cuda: expected a CUDA GPU, found none"),
    ],
)
def test_bench_bad_input(cfg_path: Path, capsys, flags: list[str], says: str):
    if flags[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["bench", "--config", str(cfg_path), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("medtune bench: error: " + says), err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_bench_imports_no_lightning():
    code = "import sys, medtune.bench; sys.exit('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


@pytest.mark.slow
def test_gpu_suite_tiny(tmp_path: Path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--device", "cpu"]
    cmd += ["--out", str(tmp_path), "--methods", "head", "lora", "--precisions", "fp32"]
    cmd += ["--configs", "swin_t_unet"]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, timeout=300)
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [r["method"] for r in rows] == ["head", "lora"]
    for r in rows:
        assert set(RESULT_KEYS) | {"config", "method", "inserted"} <= set(r)
        assert r["config"] == "brats/swin_t_unet" and r["floor_s"] == rows[0]["floor_s"]
        assert r["floor_forward_s"] == rows[0]["floor_forward_s"] > 0
    assert rows[0]["step_over_compare"] == 1.0
    md = (tmp_path / "gpu_suite.md").read_text()
    assert md.startswith("CPU --tiny rehearsal") and "| brats/swin_t_unet | lora |" in md


def test_prepare_training_model_applies_switches():
    """What `bench` times with the switches on is the model training runs: the backbone
    recomputes its blocks, and the forward goes through torch.compile."""
    from medtune.bench.measure import prepare_training_model
    from medtune.modeling.model import build_model
    from medtune.training.config import config_from_dict

    cfg = config_from_dict(TINY)
    cfg.train.activation_checkpointing = True
    cfg.train.compile = True
    cfg.train.compile_backend = "aot_eager"
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = torch.randn(1, 4, 8, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    run = prepare_training_model(model, cfg.train)
    assert run.backbone.activation_checkpointing
    assert run._compiled_call_impl is not None
    with torch.no_grad():
        assert torch.allclose(run(x), expected, atol=1e-5)


def test_bench_switch_flags(cfg_path: Path, capsys):
    code = main(
        ["bench", "--config", str(cfg_path), "--device", "cpu", "--json", "--no-tta"]
        + ["--activation-checkpointing", *FAST]
    )
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["activation_checkpointing"] is True and row["compile"] is False
    # the training defaults, as the row reports them
    assert row["fold_frozen_batchnorm"] is True and row["optimizer_impl"] == "auto"
    assert math.isfinite(row["step_s"]) and row["step_s"] > 0
