"""Helpers for the tuning-method tests (imported by them); the tiny models themselves come from
`tests/tiny.py`."""

from __future__ import annotations

import torch

from medtune.core.configbase import to_dict
from medtune.modeling.model import ModelConfig


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
