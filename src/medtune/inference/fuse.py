"""Inference-only speed-ups of a model that keep its outputs: BatchNorm folded into convs.

`fuse_conv_bn(model)` returns a *copy* of an eval-mode model in which every BatchNorm that
directly follows a convolution among a module's children (timm's `conv_*` / `bn*` pairs, e.g.
EfficientNet-Lite's `conv_pw` + `bn2`) is folded into that convolution with
`torch.nn.utils.fusion.fuse_conv_bn_eval`. timm's `BatchNormAct2d` keeps its activation (and
drop) after the fold. Pairing by registration order is a heuristic, so `checked_fuse` runs
both models on a trial window and keeps the fused copy only when they agree to `atol`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medtune.modeling.frozen_bn import unfold_frozen_batchnorm
from medtune.modeling.layout import channels_last_convs

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _ActOnly(nn.Module):
    """What remains of timm's `BatchNormAct2d` once its normalisation is folded: drop + act."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS)
        and isinstance(bn, _BNS)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fuse_children(module: nn.Module) -> int:
    """Fold each (conv, bn) pair of adjacent children of `module`; returns how many."""
    names = list(module._modules)
    folded = 0
    for a, b in zip(names, names[1:], strict=False):
        conv, bn = module._modules[a], module._modules[b]
        if conv is None or bn is None or not _foldable(conv, bn):
            continue
        module._modules[a] = fuse_conv_bn_eval(conv, bn)
        plain = type(bn) in _BNS
        module._modules[b] = nn.Identity() if plain else _ActOnly(bn)
        folded += 1
    return folded


def fuse_conv_bn(model: nn.Module) -> tuple[nn.Module, int]:
    """A fused eval-mode copy of `model` and the number of BatchNorms folded (see module doc)."""
    fused = copy.deepcopy(model).eval()
    unfold_frozen_batchnorm(fused)  # a model fresh from training: its folds become real ones
    count = sum(_fuse_children(m) for m in list(fused.modules()))
    return fused, count


def checked_fuse(
    model: nn.Module, trial: torch.Tensor, atol: float = 1e-5, channels_last: bool = False
) -> tuple[nn.Module, str]:
    """`fuse_conv_bn(model)` when it folds something and its logits on `trial` (one window
    `(1, C, d, h, w)`) match `model`'s to `atol` (absolute, after a relative scale of the
    logits' magnitude); else `model` itself. With `channels_last`, the fused copy's 2D convs
    get channels-last weights (`medtune.modeling.layout`; the copy only, never `model`).
    Returns (model to use, a note for reports)."""
    fused, count = fuse_conv_bn(model)
    if channels_last:
        channels_last_convs(fused, frozen_only=False)
    if count == 0:
        return model, "no BatchNorm to fold"
    with torch.inference_mode():
        ref = model(trial).float()
        got = fused(trial).float()
    diff = float((ref - got).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if diff > atol * scale:
        return model, f"folding {count} BatchNorm(s) changed the logits by {diff:.2e}; not fused"
    return (
        fused,
        f"folded {count} BatchNorm(s) into convs (max |diff| {diff:.1e} on a trial window)",
    )
