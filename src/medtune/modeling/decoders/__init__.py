"""Decoders: 2D segmentation heads sized from the backbone's declared features.

Every decoder maps the backbone's features `[(N, C_i, H/s_i, W/s_i)]` to per-slice logits
`(N, K, H, W)`. `create_decoder(cfg, backbone, num_classes)`; `name: auto` picks the backbone's
`default_decoder` (UPerNet for ViTs, the Swin-UNet decoder for Swin, the U-Net decoder for CNNs).
Decoders of native 3D backbones (`VOLUME_DECODERS`: `swin_unetr`) map volumetric features
`[(B, C_i, D/s_i, H/s_i, W/s_i)]` to `(B, K, D, H, W)`; a 2D decoder on a native 3D backbone,
or the reverse, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.core.registry import Registry
from medtune.modeling.backbones.base import Backbone
from medtune.modeling.decoders.setr import SETRMLADecoder, SETRNaiveDecoder, SETRPUPDecoder
from medtune.modeling.decoders.swin_unet import SwinUNetDecoder
from medtune.modeling.decoders.swin_unetr import SwinUNETRDecoder
from medtune.modeling.decoders.unet import UNetDecoder
from medtune.modeling.decoders.unetr import UNETRDecoder
from medtune.modeling.decoders.upernet import UPerNetDecoder

DECODERS: Registry = Registry("decoder")
VOLUME_DECODERS = frozenset({"swin_unetr"})
"""Decoders of native 3D backbones (volumes in, volumes out); every other decodes slices."""


@dataclass
class DecoderConfig:
    """Which decoder turns the backbone's features into per-slice logits."""

    name: str = "auto"
    """`upernet`, `swin_unet`, `unet`, `setr_naive`, `setr_pup`, `setr_mla`, `unetr`,
    `swin_unetr` (native 3D), or `auto` (the backbone's `default_decoder`: ViT -> upernet,
    Swin -> swin_unet, CNN -> unet, Swin UNETR -> swin_unetr)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Decoder keyword options (e.g. `channels: 256` for UPerNet, `depth: 2` for Swin-UNet)."""


@DECODERS.register("upernet")
def _upernet(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return UPerNetDecoder(backbone.feature_info, num_classes, **kw)


@DECODERS.register("swin_unet")
def _swin_unet(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    heads = [f.num_heads for f in backbone.feature_info]
    if backbone.window_size is None or None in heads:
        raise MedtuneInputError(
            f"decoder swin_unet needs a backbone of windowed-attention stages (Swin), found "
            f"{backbone.name} ({backbone.family}); use decoder.name: {backbone.default_decoder}"
        )
    return SwinUNetDecoder(
        backbone.feature_info, num_classes, heads, backbone.window_size, backbone.img_size, **kw
    )


@DECODERS.register("swin_unetr")
def _swin_unetr(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return SwinUNETRDecoder(backbone.feature_info, num_classes, **kw)


@DECODERS.register("unet")
def _unet(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return UNetDecoder(backbone.feature_info, num_classes, **kw)


# The paper's decoder study (Table 13): SETR's three decoders and a UNETR-style decoder.
@DECODERS.register("setr_naive")
def _setr_naive(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return SETRNaiveDecoder(backbone.feature_info, num_classes, **kw)


@DECODERS.register("setr_pup")
def _setr_pup(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return SETRPUPDecoder(backbone.feature_info, num_classes, **kw)


@DECODERS.register("setr_mla")
def _setr_mla(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    return SETRMLADecoder(backbone.feature_info, num_classes, **kw)


@DECODERS.register("unetr")
def _unetr(backbone: Backbone, num_classes: int, **kw: Any) -> nn.Module:
    try:
        return UNETRDecoder(backbone.feature_info, num_classes, backbone.in_chans, **kw)
    except ValueError as exc:
        raise MedtuneInputError(f"decoder unetr on {backbone.name}: {exc}") from exc


def list_decoders() -> list[str]:
    """Registered decoder names."""
    return DECODERS.names()


def check_decoder_fits(name: str, backbone: Backbone) -> None:
    """Refuse a 2D (per-slice) decoder on a native 3D backbone, and a volume decoder on a 2D one."""
    if name not in DECODERS or (name in VOLUME_DECODERS) != backbone.folds_slices:
        return
    if backbone.folds_slices:
        what = f"decodes the volumes of a native 3D backbone; {backbone.name} ({backbone.family}) runs over slices"
    else:
        what = f"decodes 2D slices; {backbone.name} ({backbone.family}) is a native 3D backbone whose features are volumes"
    raise MedtuneInputError(
        f"decoder {name} {what}; use decoder.name: {backbone.default_decoder} (or auto)"
    )


def create_decoder(cfg: DecoderConfig, backbone: Backbone, num_classes: int) -> nn.Module:
    """Build the decoder `cfg.name` for `backbone`'s features."""
    name = backbone.default_decoder if cfg.name == "auto" else cfg.name
    check_decoder_fits(name, backbone)
    try:
        return DECODERS.create(name, backbone, num_classes, **cfg.options)
    except TypeError as exc:
        raise MedtuneInputError(f"decoder {name}: bad options {cfg.options}: {exc}") from exc
