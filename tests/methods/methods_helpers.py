"""Helpers for the tuning-method tests (imported by them): tiny models of each family, seeded
builds, random volumes."""

from __future__ import annotations

import torch

from medtune.core.configbase import from_dict, to_dict
from medtune.modeling.model import ModelConfig, build_model

# backbone preset -> decoder section (tiny UPerNet where it fits; cnn_test has 5 levels -> U-Net)
FAMILIES = {
    "vit": ("vit_test", {"name": "upernet", "options": {"channels": 32}}),
    "swin": ("swin_test", {"name": "upernet", "options": {"channels": 32}}),
    "cnn": ("cnn_test", {"name": "unet", "options": {"channels": [16, 16, 16, 16]}}),
    "resnet": ("resnet_test", {"name": "unet", "options": {"channels": [16, 16, 16, 16]}}),
    "regnet": ("regnet_test", {"name": "unet", "options": {"channels": [16, 16, 16, 16]}}),
    "dinov2reg": ("dinov2reg_test", {"name": "upernet", "options": {"channels": 32}}),
    "eva": ("eva_test", {"name": "upernet", "options": {"channels": 32}}),
    "sam": ("sam_test", {"name": "upernet", "options": {"channels": 32}}),
}
FAMILY_OF = {"resnet": "cnn", "regnet": "cnn", "dinov2reg": "vit"}
"""Test family -> backbone family, where the two differ."""
IN_CHANS = 4
SLICES = 8
SIZE = 64


def tiny_config(family: str, method: str, num_classes: int = 3, **options) -> ModelConfig:
    """Model config of a tiny test backbone of `family` with `method`."""
    preset, decoder = FAMILIES[family]
    spec = {"name": method, **options}
    if method == "med_adapter":
        spec.setdefault("train_depth", SLICES)
    data = {
        "backbone": {"name": preset, "in_chans": IN_CHANS, "img_size": SIZE},
        "decoder": decoder,
        "method": spec,
        "num_classes": num_classes,
    }
    return from_dict(ModelConfig, data)


def seeded_build(cfg: ModelConfig, seed: int = 0):
    """Build `cfg` with a fixed seed: the same seed gives the same frozen backbone weights."""
    torch.manual_seed(seed)
    return build_model(cfg, load_weights=False)


def volume(seed: int = 1, batch: int = 1) -> torch.Tensor:
    """A random volume `(B, C, D, H, W)`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CHANS, SLICES, SIZE, SIZE, generator=g)


def perturb_tuned(model, seed: int = 3, scale: float = 0.05) -> None:
    """Give every tuned tensor non-trivial values (zero-initialised up-projections included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def config_dict(cfg: ModelConfig) -> dict:
    """Plain-dict model config, as `save_adapter` records it."""
    return to_dict(cfg)
