"""timm CNNs (ResNet / ResNeXt / SE-ResNet, RegNet, ConvNeXt, EfficientNet, MobileNet) over slices,
through timm's feature API.

`feature_info` names the module after which each feature stage ends (`act1`, `layer1`..
`layer4` for a ResNet, `blocks.1`.. for an EfficientNet, `stages.0`.. for a ConvNeXt);
`prune_intermediate_layers` removes what follows the last stage (head convs, classifier), and
`forward_intermediates` (timm's own forward, stopping at the last stage) runs the model. An
inserted module runs after each feature stage through a forward hook on that stage's module,
so it feeds the next stage; the hooked outputs are the decoder's features. Every feature stage
is an insertion point and a stage end.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import (
    FeatureInfo,
    InsertionPoint,
    SliceBackbone,
    checkpointed,
)
from medtune.modeling.slicing import SliceContext


class _CheckpointedForward:
    """Instance `forward` of a CNN block under activation checkpointing: in training, its
    class's `forward` runs under `torch.utils.checkpoint` (non-reentrant; BatchNorm running
    statistics updated once, `checkpointed`). Forward hooks, where the inserted modules run,
    stay outside: their activations are kept."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        m = self.module
        fwd = type(m).forward
        if not (m.training and torch.is_grad_enabled()):
            return fwd(m, *args, **kwargs)
        return checkpointed(lambda *a: fwd(m, *a, **kwargs), [m], *args)


class _StageHook:
    """Forward hook of feature stage `k`: hands the stage output to the backbone."""

    def __init__(self, owner: CNNSliceBackbone, k: int):
        self.owner = owner
        self.k = k

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self.owner.after_stage(self.k, output)


class CNNSliceBackbone(SliceBackbone):
    """A timm CNN over slices; every feature stage of `feature_info` is a stage end."""

    family = "cnn"
    timm_modules = ("resnet", "regnet", "convnext", "efficientnet", "mobilenetv3")
    timm_classes = ("ResNet", "RegNet", "ConvNeXt", "EfficientNet", "MobileNetV3")
    capabilities = frozenset()
    capability_notes = {
        "transformer_blocks": "its stages are convolution blocks, without attention or MLP sub-blocks",
    }
    default_decoder = "unet"

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int):
        super().__init__(model, name, timm_name, in_chans, img_size)
        info = model.feature_info
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(len(info), prune_norm=True, prune_head=True)
        self.feature_modules = [d["module"] for d in info]
        """Name of the module ending each feature stage (timm `feature_info`)."""
        for k, mod in enumerate(self.feature_modules):
            model.get_submodule(mod).register_forward_hook(_StageHook(self, k))
        self._ctx: SliceContext | None = None
        self._feats: list[torch.Tensor] = []
        self.feature_info = [FeatureInfo(d["num_chs"], d["reduction"]) for d in info]
        self.insertion_points = [
            InsertionPoint(k, f.channels, f.stride, k, True)
            for k, f in enumerate(self.feature_info)
        ]

    def checkpoint_units(self) -> list[str]:
        """Modules recomputed under activation checkpointing: the feature stages after the
        stem, and where stages are numbered children of one container (`blocks.1`, `stages.0`),
        every child of it up to the last feature stage (timm's `forward_intermediates` runs
        them; the stem and the inserted modules keep their activations)."""
        units: list[str] = []
        for name in self.feature_modules[1:]:
            parent, _, idx = name.rpartition(".")
            if parent and idx.isdigit():
                units += [f"{parent}.{j}" for j in range(int(idx) + 1)]
            else:
                units.append(name)
        return list(dict.fromkeys(units))

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        super().set_activation_checkpointing(enabled)
        for name in self.checkpoint_units():
            mod = self.model.get_submodule(name)
            if enabled and "forward" not in mod.__dict__:
                mod.forward = _CheckpointedForward(mod)
            elif not enabled and "forward" in mod.__dict__:
                del mod.forward

    def after_stage(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Feature stage `k`'s output `(N, C, h, w)` -> its inserted module's output (kept as
        feature `k`); outside `forward_features` the output passes unchanged."""
        if self._ctx is None:
            return x
        if str(k) in self.post_block:
            x = self.run_post(k, x.permute(0, 2, 3, 1), self._ctx).permute(0, 3, 1, 2)
        self._feats.append(x)
        return x

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        m = self.model
        n = len(self.feature_info)
        self._ctx, self._feats = ctx, []
        try:
            if hasattr(m, "forward_intermediates"):
                m.forward_intermediates(x, indices=n, intermediates_only=True, stop_early=True)
            else:
                m.forward_features(x)
            feats = self._feats
        finally:
            self._ctx, self._feats = None, []
        if len(feats) != n:
            raise MedtuneInputError(
                f"backbone {self.timm_name}: expected each of the feature modules "
                f"{self.feature_modules} to run once, {len(feats)} outputs were seen"
            )
        return feats

    def input_conv_name(self) -> str:
        for n, m in self.model.named_modules():
            if isinstance(m, nn.Conv2d):
                return n
        raise ValueError(f"{self.timm_name}: no input convolution found")
