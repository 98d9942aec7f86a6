"""timm CNNs (EfficientNet, ResNet, ConvNeXt, ...) run over slices.

The model's top-level modules are run in order (nn.Sequential children flattened, as timm's
feature extraction does), and the modules named in timm's `feature_info` are the stage ends:
one insertion point and one decoder feature after each.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.modeling.backbones.base import FeatureInfo, InsertionPoint, SliceBackbone
from medtune.modeling.slicing import SliceContext


def _flatten_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level modules in order, with nn.Sequential children flattened one level."""
    out = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.Sequential):
            out.extend((f"{name}.{sub}", m) for sub, m in mod.named_children())
        else:
            out.append((name, mod))
    return out


def _prune_after(model: nn.Module, kept: set[str], dropped: list[str]) -> None:
    """Replace the modules after the last feature stage (head convs, classifier) by Identity.

    They never run over slices, so they would only add frozen, gradient-less parameters.
    """
    for name in dropped:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if parent and isinstance(owner, nn.Sequential):
            continue  # trailing children of a kept Sequential: removed below
        setattr(owner, child, nn.Identity())
    for name, mod in list(model.named_children()):
        if isinstance(mod, nn.Sequential):
            keep = [c for c, _ in mod.named_children() if f"{name}.{c}" in kept]
            if keep and len(keep) < len(mod):
                setattr(model, name, nn.Sequential(*[mod.get_submodule(c) for c in keep]))


class CNNSliceBackbone(SliceBackbone):
    """A timm CNN over slices; every feature stage of `feature_info` is a stage end."""

    family = "cnn"
    capabilities = frozenset()
    default_decoder = "unet"

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        info = model.feature_info
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        feature_modules = [d["module"] for d in info]
        mods = _flatten_modules(model)
        names = [n for n, _ in mods]
        missing = [f for f in feature_modules if f not in names]
        if missing:
            raise ValueError(
                f"{timm_name}: feature modules {missing} are not top-level modules; unsupported CNN layout"
            )
        last = names.index(feature_modules[-1])
        self._run_names = names[: last + 1]
        _prune_after(model, set(self._run_names), names[last + 1 :])
        self._feature_pos = {names.index(f): k for k, f in enumerate(feature_modules)}
        self.feature_info = [FeatureInfo(d["num_chs"], d["reduction"]) for d in info]
        self.insertion_points = [
            InsertionPoint(k, f.channels, f.stride, k, True)
            for k, f in enumerate(self.feature_info)
        ]

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        feats = []
        for pos, name in enumerate(self._run_names):
            x = self.model.get_submodule(name)(x)
            k = self._feature_pos.get(pos)
            if k is not None:
                if str(k) in self.post_block:
                    x = self.run_post(k, x.permute(0, 2, 3, 1), ctx).permute(0, 3, 1, 2)
                feats.append(x)
        return feats

    def input_conv_name(self) -> str:
        first = self._run_names[0]
        mod = self.model.get_submodule(first)
        if isinstance(mod, nn.Conv2d):
            return first
        for n, m in mod.named_modules():
            if isinstance(m, nn.Conv2d):
                return f"{first}.{n}"
        raise ValueError(f"{self.timm_name}: no input convolution found")
