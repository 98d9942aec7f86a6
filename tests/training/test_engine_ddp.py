"""DDP on the CPU: `medtune train` with 2 processes (gloo) trains and validates.

The validation Dice that the two processes reduce together (3 validation cases: 2 on rank 0,
1 plus a zero-weight pad on rank 1) must equal a single-process evaluation of the saved
adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medtune.artifacts.adapters import load_adapter
from medtune.data.cached import load_case
from medtune.inference.sliding_window import predict_volume, probs_to_labels
from medtune.training.module import region_dice
from medtune.training.run import load_run_config


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_validate(make_config, tmp_path):
    # A private cache: its splits_final.json gets 2 folds (3 validation cases).
    cfg_path, _ = make_config(
        data__num_folds=2,
        data__cache=str(tmp_path / "cache"),
        train__max_epochs=1,
        train__steps_per_epoch=2,
        train__deterministic=False,
    )
    out = tmp_path / "run"
    medtune = Path(sys.executable).with_name("medtune")
    cmd = [
        str(medtune),
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        "--train.accelerator",
        "cpu",
        "--train.devices",
        "2",
        "--train.strategy",
        "ddp",
        "--train.progress_bar",
        "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # stdout holds only rank 0's summary line; the progress bar went to stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trained 1 epoch(s)"), proc.stdout[-2000:]
    assert "Epoch 0" in proc.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    # 2 steps per process of batch 2: 8 crops in the epoch, 2 optimiser steps.
    assert summary["global_step"] == 2
    assert len(summary["val_cases"]) == 3
    best = summary["best"]
    assert best["epoch"] == 1 and set(best["regions"]) == {"WT", "TC", "ET"}

    # The reduced validation Dice is the mean over the 3 cases, evaluated here in one process.
    model = load_adapter(out / "adapter", load_backbone_weights=False, allow_backbone_mismatch=True)
    ckpt = torch.load(out / "trainer_state" / "last.ckpt", weights_only=True, map_location="cpu")
    frozen = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(frozen, strict=False)  # the random frozen backbone of the run
    resolved = load_run_config(out)
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    dices = []
    for case_id in summary["val_cases"]:
        image, label, _ = load_case(resolved.data.cache, case_id, mmap=False)
        probs = predict_volume(model, torch.from_numpy(image), window=(8, 32, 32), overlap=2 / 3)
        dices.append(region_dice(probs_to_labels(probs), label, regions))
    expected = dict(zip(regions, np.mean(dices, axis=0).tolist()))
    assert best["regions"] == pytest.approx(expected, abs=1e-6)
