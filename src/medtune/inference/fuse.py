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

from medtune.modeling.frozen_bn import (
    PLAIN_BATCHNORMS,
    conv_bn_pairs,
    drop_and_act,
    unfold_frozen_batchnorm,
)
from medtune.modeling.layout import channels_last_convs


class _ActOnly(nn.Module):
    """What remains of timm's `BatchNormAct2d` once its normalisation is folded: drop + act."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_and_act(self, x)


def fuse_conv_bn(model: nn.Module) -> tuple[nn.Module, int]:
    """A fused eval-mode copy of `model` and the number of BatchNorms folded (see module doc)."""
    fused = copy.deepcopy(model).eval()
    unfold_frozen_batchnorm(fused)  # a model fresh from training: its folds become real ones
    count = 0
    for parent, a, b in list(conv_bn_pairs(fused)):
        bn = parent._modules[b]
        plain = type(bn) in PLAIN_BATCHNORMS  # nothing of it is left after the fold
        parent._modules[a] = fuse_conv_bn_eval(parent._modules[a], bn)
        parent._modules[b] = nn.Identity() if plain else _ActOnly(bn)
        count += 1
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
    if count == 0:
        return model, "no BatchNorm to fold"
    if channels_last:
        channels_last_convs(fused, frozen_only=False)
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
