"""Frozen BatchNorms folded into their convolutions for training, state dict untouched.

A tuning method freezes the backbone, and its BatchNorms stay in eval mode: each computes a
fixed per-channel affine map `y = (x - mean) / sqrt(var + eps) * gamma + beta`, which the
convolution before it can absorb (`W' = W * s`, `b' = (b - mean) * s + beta`, with
`s = gamma / sqrt(var + eps)`). Methods that insert trainable modules into a CNN backbone
(Med-Tuning's adapters after each stage, LoRA, ...) backpropagate through the frozen stages,
and there each BatchNorm costs a forward and an input-gradient pass of its own; folded, it
costs nothing (the demo's EfficientNet-Lite0 Med-Tuning step: 0.63x as long, docs/performance.md).

`fold_frozen_batchnorm(model)` finds the pairs with `conv_bn_pairs`, shared with inference
(a conv child directly followed by a BatchNorm child of the same module, registration order: timm's
`conv_pw` + `bn2`, ResNet's `conv1` + `bn1`, `downsample` `(conv, bn)`) whose parameters are
all frozen, and changes only their `forward`s: the conv computes with the folded weight and
bias (recomputed from the live tensors at each call, without gradient: a reloaded checkpoint,
a `.to(device)` or a changed running statistic is always honoured), the BatchNorm keeps only
what follows its normalisation (timm's `BatchNormAct2d`: drop and activation). No module is
replaced and no tensor changes, so state dicts, checkpoints, adapter files and parameter
names are those of the model as built. A BatchNorm switched to train mode makes its pair run
unfolded again (the check is at every call). `checked_fold_frozen_batchnorm` compares the
model's outputs on a trial window with and without the fold and undoes it on a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _plain_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    return conv._conv_forward(x, weight, bias)


def _conv_same(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    from timm.layers.conv2d_same import conv2d_same

    return conv2d_same(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_calls() -> dict[type, Callable[..., torch.Tensor]]:
    """Conv class -> its forward with a given weight and bias. Exact classes only: a subclass
    with a forward of its own is not folded unless listed (timm's TF-style `Conv2dSame`,
    EfficientNet-Lite's, pads in its forward)."""
    calls: dict[type, Callable[..., torch.Tensor]] = {
        nn.Conv1d: _plain_conv,
        nn.Conv2d: _plain_conv,
        nn.Conv3d: _plain_conv,
    }
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return calls
    calls[Conv2dSame] = _conv_same
    return calls


_CONV_CALLS = _conv_calls()
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""The BatchNorm classes folds pair (and their subclasses); an exact one leaves nothing after
its fold, a subclass (timm's `BatchNormAct2d`) its drop and activation."""


def conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """`(parent, conv name, BatchNorm name)` for every conv child of a module of `model`
    directly followed (registration order) by a BatchNorm child (`BatchNorm1d/2d/3d` or a
    subclass such as timm's `BatchNormAct2d`) with running statistics, one per output channel
    of the conv. The pairing both folds use: this one for training, `medtune.inference.fuse`."""
    for module in list(model.modules()):
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if (
                isinstance(conv, _CONVS)
                and isinstance(bn, PLAIN_BATCHNORMS)
                and bn.track_running_stats
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
            ):
                yield module, a, b


def drop_and_act(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What follows the normalisation of timm's `BatchNormAct2d` (its `drop`, then its `act`;
    either may be absent), applied to `x`; for a module with neither, `x` itself."""
    drop = getattr(module, "drop", None)
    act = getattr(module, "act", None)
    if drop is not None:
        x = drop(x)
    return act(x) if act is not None else x


def folded_weights(conv: nn.Module, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's weight and bias with `bn` (eval mode) folded in (computed in at least
    float32, returned in the conv weight's dtype)."""
    dtype = torch.promote_types(conv.weight.dtype, torch.float32)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(dtype)
        shift = -bn.running_mean.to(dtype) * scale
        if conv.bias is not None:
            shift = shift + conv.bias.to(dtype) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(dtype)
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        weight = conv.weight.to(dtype) * scale.view(shape)
    return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


class FoldedConvForward:
    """The `forward` of a folded conv: the conv with `bn` folded in while `bn` is in eval
    mode, else the conv's own forward. A plain callable (not a module, not a bound method), so
    a model with folded pairs deep-copies and pickles (DDP spawn) with its folds intact."""

    def __init__(self, conv: nn.Module, bn: _BatchNorm):
        self.conv = conv
        self.bn = bn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training:
            return type(conv).forward(conv, x)
        weight, bias = folded_weights(conv, bn)
        return _CONV_CALLS[type(conv)](conv, x, weight, bias)


class FoldedBatchNormForward:
    """The `forward` of a folded BatchNorm: what follows its normalisation (timm's
    `BatchNormAct2d`: drop, then activation; a plain BatchNorm: nothing) while in eval mode,
    else its own forward."""

    def __init__(self, bn: _BatchNorm):
        self.bn = bn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn.training:
            return type(bn).forward(bn, x)
        return x if type(bn) in PLAIN_BATCHNORMS else drop_and_act(bn, x)


def _foldable_for_training(conv: nn.Module, bn: nn.Module) -> bool:
    """A pair of `conv_bn_pairs` that training may fold: all frozen, a conv class whose
    forward is known (`_CONV_CALLS`), zero padding, not folded already."""
    return (
        type(conv) in _CONV_CALLS
        and conv.padding_mode == "zeros"
        and not any(p.requires_grad for p in [*conv.parameters(), *bn.parameters()])
        and "forward" not in conv.__dict__
        and "forward" not in bn.__dict__
    )


def fold_frozen_batchnorm(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Fold every frozen (conv, BatchNorm) pair of adjacent children (see the module doc);
    returns the pairs folded."""
    pairs = []
    for parent, a, b in conv_bn_pairs(model):
        conv, bn = parent._modules[a], parent._modules[b]
        if _foldable_for_training(conv, bn):
            conv.forward = FoldedConvForward(conv, bn)
            bn.forward = FoldedBatchNormForward(bn)
            pairs.append((conv, bn))
    return pairs


def unfold_frozen_batchnorm(model: nn.Module) -> int:
    """Undo `fold_frozen_batchnorm` on `model`; returns the number of pairs unfolded."""
    count = 0
    for conv in model.modules():
        folded = conv.__dict__.get("forward")
        if isinstance(folded, FoldedConvForward):
            del conv.__dict__["forward"]
            folded.bn.__dict__.pop("forward", None)
            count += 1
    return count


def checked_fold_frozen_batchnorm(
    model: nn.Module, trial: torch.Tensor, atol: float = 1e-4
) -> tuple[int, str]:
    """`fold_frozen_batchnorm(model)`, kept only when the model's eval-mode outputs on `trial`
    agree with and without it to `atol` (after a relative scale of the output's magnitude).
    Returns (pairs folded, a note for the log)."""
    pairs = fold_frozen_batchnorm(model)
    if not pairs:
        return 0, "no frozen BatchNorm to fold"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = model(trial).float()
            unfold_frozen_batchnorm(model)
            ref = model(trial).float()
    finally:
        model.train(was_training)
    diff = float((ref - got).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not diff <= atol * scale:
        return (
            0,
            f"folding {len(pairs)} frozen BatchNorm(s) changed the outputs by {diff:.2e}; not folded",
        )
    fold_frozen_batchnorm(model)
    return len(pairs), (
        f"folded {len(pairs)} frozen BatchNorm(s) into their convs for training "
        f"(max |diff| {diff:.1e} on a trial window)"
    )
