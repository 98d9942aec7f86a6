"""The tiny test models and experiments every test folder builds (one place, imported as `tiny`).

Tiny registered backbones of each family with a decoder that fits them, seeded builds, random
volumes, and the tiny experiment config that the training and inference tests train on phantoms.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from medtune.core.configbase import apply_overrides, from_dict
from medtune.modeling.model import ModelConfig, build_model
from medtune.training.config import ExperimentConfig, config_from_dict

_UPERNET = {"name": "upernet", "options": {"channels": 32}}
_UNET = {"name": "unet", "options": {"channels": [16, 16, 16, 16]}}
FAMILIES = {
    "vit": ("vit_test", _UPERNET),
    "swin": ("swin_test", _UPERNET),
    "cnn": ("cnn_test", _UNET),
    "resnet": ("resnet_test", _UNET),
    "regnet": ("regnet_test", _UNET),
    "dinov2reg": ("dinov2reg_test", _UPERNET),
    "eva": ("eva_test", _UPERNET),
    "sam": ("sam_test", _UPERNET),
}
"""Test family -> (tiny backbone preset, decoder section: tiny UPerNet, or U-Net for CNNs)."""
FAMILY_OF = {"resnet": "cnn", "regnet": "cnn", "dinov2reg": "vit"}
"""Test family -> backbone family, where the two differ."""
IN_CHANS = 4
SLICES = 8
SIZE = 64


def tiny_model_config(
    family: str,
    method: str | dict = "med_adapter",
    *,
    num_classes: int = 3,
    in_chans: int = IN_CHANS,
    depth: int = SLICES,
    decoder: dict | None = None,
    **options: Any,
) -> ModelConfig:
    """Model config of the tiny backbone of `family` tuned by `method` (a name or a method
    section, updated by `options`); a Med-Adapter's Fourier filter is trained for `depth` slices;
    `decoder` replaces the family's tiny decoder section."""
    preset, default_decoder = FAMILIES[family]
    spec = {"name": method} if isinstance(method, str) else dict(method)
    spec.update(options)
    if spec["name"] == "med_adapter":
        spec.setdefault("train_depth", depth)
    data = {
        "backbone": {"name": preset, "in_chans": in_chans, "img_size": SIZE},
        "decoder": copy.deepcopy(default_decoder if decoder is None else decoder),
        "method": spec,
        "num_classes": num_classes,
    }
    return from_dict(ModelConfig, data)


def seeded_build(cfg: ModelConfig, seed: int = 0):
    """Build `cfg` without weights and with a fixed seed: the same seed, the same frozen backbone."""
    torch.manual_seed(seed)
    return build_model(cfg, load_weights=False)


def volume(seed: int = 1, batch: int = 1, depth: int = SLICES) -> torch.Tensor:
    """A random volume `(B, C, D, H, W)` of the tiny models' channels and slice size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CHANS, depth, SIZE, SIZE, generator=g)


PHANTOM_SHAPE = (16, 40, 40)
"""(D, H, W) of the phantoms the tiny experiments train on."""

EXPERIMENT: dict[str, Any] = {
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
"""A 2-epoch Med-Tuning run of a 4-block ViT on 4-channel phantoms (seconds on the CPU)."""


def tiny_experiment(root: Path, **overrides: Any) -> tuple[dict[str, Any], ExperimentConfig]:
    """(plain dict, ExperimentConfig) of `EXPERIMENT` on dataset `root`; keys `a__b` override `a.b`."""
    data = copy.deepcopy(EXPERIMENT)
    data["data"]["root"] = str(root)
    data = apply_overrides(data, {k.replace("__", "."): v for k, v in overrides.items()})
    return data, config_from_dict(data)
