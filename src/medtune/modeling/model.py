"""The 3D segmentation model: fold a volume into slices, run the backbone (with the tuning
method's inserted modules) and the 2D decoder, unfold the logits into a volume.

    volume (B, C, D, H, W) -> fold_slices -> (B*D, C, H, W)
      -> zero-padded to a multiple of the patch where a family needs it (cropped back at the end)
      -> backbone blocks, each followed by its inserted module (mixing across slices)
      -> multi-scale features [(B*D, C_i, H/s_i, W/s_i)]
      -> decoder -> (B*D, K, H, W) -> unfold_slices -> logits (B, K, D, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones import Backbone, BackboneConfig, create_backbone
from medtune.modeling.decoders import DecoderConfig, create_decoder
from medtune.modeling.methods import TuningMethod, create_method
from medtune.modeling.slicing import SliceContext, fold_slices, unfold_slices


@dataclass
class ModelConfig:
    """Backbone, decoder, tuning method and number of classes."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The 2D backbone run over slices."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The per-slice decoder."""
    method: dict[str, Any] | str = field(default_factory=lambda: {"name": "med_adapter"})
    """Tuning method: `{name: <method>, **options}` or a bare name (see `medtune.modeling.methods.list_methods()`)."""
    num_classes: int = 4
    """Output classes K, background included."""

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            self.method = {"name": self.method}
        if self.num_classes < 2:
            raise MedtuneInputError(
                f"model.num_classes: expected >= 2 (background included), found {self.num_classes}"
            )
        self.method = create_method(self.method).to_dict()  # validates, fills defaults


class SegModel(nn.Module):
    """Volume `(B, C, D, H, W)` -> logits `(B, K, D, H, W)` (softmax left to loss and inferer)."""

    def __init__(self, backbone: Backbone, decoder: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.num_classes = num_classes
        self.inserted_names: list[str] = []
        """Parameters the tuning method added (set by `TuningMethod.apply`)."""
        self.method: TuningMethod | None = None
        self.merged = False
        """True once a method folded its weights into the backbone (deployment only)."""

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise MedtuneInputError(
                f"model input: expected a volume (B, C, D, H, W), found shape {tuple(x.shape)}"
            )
        b, c, d, h, w = x.shape
        if c != self.in_chans:
            raise MedtuneInputError(f"model input: expected {self.in_chans} channels, found {c}")
        ctx = SliceContext(batch=b, depth=d)
        if not self.backbone.folds_slices:  # a native 3D family: volumes in, volumes out
            return self.decoder(self.backbone(x, ctx), (d, h, w))
        slices = self.backbone.pad_slices(fold_slices(x))  # (B*D, C, H', W'), H' >= H
        feats = self.backbone(slices, ctx)
        size = tuple(slices.shape[-2:])
        if getattr(self.decoder, "uses_input", False):  # e.g. UNETR's skip from the input
            logits = self.decoder(feats, size, slices)
        else:
            logits = self.decoder(feats, size)
        return unfold_slices(logits[..., :h, :w], b)  # crop the padding back: (B, K, D, H, W)

    def train(self, mode: bool = True) -> SegModel:
        """Like `nn.Module.train`, but frozen BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, _BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)
                ):
                    m.eval()
        return self


def build_model(
    cfg: ModelConfig, load_weights: bool = True, report: list[str] | None = None
) -> SegModel:
    """Build backbone + decoder, load pre-trained weights (when asked and the method uses
    them), and apply the tuning method. `medtune params` passes `load_weights=False`.

    Lines describing what weight loading adapted, resized or skipped are appended to `report`.
    """
    method = create_method(cfg.method)
    backbone = create_backbone(cfg.backbone)
    decoder = create_decoder(cfg.decoder, backbone, cfg.num_classes)
    model = SegModel(backbone, decoder, cfg.num_classes)
    if load_weights and method.uses_pretrained and cfg.backbone.pretrained:
        from medtune.modeling.backbones.weights import load_backbone_weights

        lines = load_backbone_weights(backbone, cfg.backbone)
        stages = backbone.stage_blocks()
        if hasattr(decoder, "init_from_encoder") and stages:
            lines += [f"decoder init: {c}" for c in decoder.init_from_encoder(stages)]
        if report is not None:
            report.extend(lines)
    elif report is not None:
        report.extend(backbone.notes)  # what the family changed (e.g. padding), weights or not
    method.apply(model)
    model.train()
    return model
