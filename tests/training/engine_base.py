"""Tiny experiment config and phantom shape shared by the training tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from medtune.core.configbase import apply_overrides
from medtune.training.config import ExperimentConfig, config_from_dict

SHAPE = (16, 40, 40)  # (D, H, W) of the phantoms

BASE: dict[str, Any] = {
    "name": "test/vit_med_adapter",
    "model": {
        "backbone": {
            "name": "vit_test",
            "in_chans": 4,
            "img_size": 32,
            "pretrained": False,
            "timm_kwargs": {"depth": 4},
        },
        "decoder": {"name": "upernet", "options": {"channels": 32}},
        "num_classes": 4,
        "method": {"name": "med_adapter"},
    },
    "data": {"crop_size": [8, 32, 32], "batch_size": 2, "num_workers": 0, "num_folds": 5},
    "train": {
        "max_epochs": 2,
        "warmup_epochs": 0,
        "lr": 0.005,
        "val_every": 1,
        "steps_per_epoch": 3,
        "log_every_n_steps": 1,
        "progress_bar": False,
        "deterministic": True,
        "sw_batch_size": 16,
        "seed": 0,
    },
}


def tiny_config(root: Path, **overrides: Any) -> tuple[dict[str, Any], ExperimentConfig]:
    """(plain dict, ExperimentConfig) of `BASE` on dataset `root`; keys `a__b` override `a.b`."""
    data = copy.deepcopy(BASE)
    data["data"]["root"] = str(root)
    data = apply_overrides(data, {k.replace("__", "."): v for k, v in overrides.items()})
    return data, config_from_dict(data)
