"""Fixtures for the core tests: tiny models of each family."""

from __future__ import annotations

import pytest
import torch

from medtune.modeling.backbones import BackboneConfig
from medtune.modeling.decoders import DecoderConfig
from medtune.modeling.model import ModelConfig, build_model

TINY = {
    "vit": dict(name="vit_test", img_size=64),
    "swin": dict(name="swin_test", img_size=64),
    "cnn": dict(name="cnn_test", img_size=64),
}


def tiny_config(
    family: str,
    method: dict | str = "med_adapter",
    in_chans: int = 4,
    classes: int = 3,
    depth: int = 8,
) -> ModelConfig:
    """A tiny model config of `family` whose Fourier filter is trained for `depth` slices."""
    if isinstance(method, str):
        method = {"name": method}
    method = dict(method)
    if method["name"] == "med_adapter":
        method.setdefault("train_depth", depth)
    decoder = DecoderConfig(options={"channels": 32}) if family == "vit" else DecoderConfig()
    return ModelConfig(
        backbone=BackboneConfig(in_chans=in_chans, **TINY[family]),
        decoder=decoder,
        method=method,
        num_classes=classes,
    )


@pytest.fixture
def make_model():
    def _make(family: str, method: dict | str = "med_adapter", **kw):
        torch.manual_seed(0)
        return build_model(tiny_config(family, method, **kw), load_weights=False)

    return _make
