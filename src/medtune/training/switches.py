"""The speed switches of `TrainConfig`, applied to a model without Lightning: one mechanism for
training (`medtune.training.module`) and `medtune bench`. Opt-in: compile and activation
checkpointing; on by default: the frozen BatchNorm fold (same outputs) and, on the CPU,
channels-last frozen convs (same values)."""

from __future__ import annotations

import torch
from torch import nn

from medtune.modeling.frozen_bn import checked_fold_frozen_batchnorm
from medtune.modeling.layout import channels_last_convs, wants_channels_last
from medtune.training.config import TrainConfig


def apply_activation_checkpointing(model: nn.Module, train: TrainConfig) -> None:
    """With `train.activation_checkpointing`, the backbone of `model` (a `SegModel`)
    recomputes its blocks in the backward pass (`Backbone.set_activation_checkpointing`)."""
    if train.activation_checkpointing:
        model.backbone.set_activation_checkpointing(True)


def apply_compile(model: nn.Module, train: TrainConfig) -> None:
    """With `train.compile`, `torch.compile` of `model` in place (`nn.Module.compile`, backend
    `train.compile_backend`), so parameter and state-dict names stay the same; once only."""
    if train.compile and not getattr(model, "_compiled_call_impl", None):
        model.compile(backend=train.compile_backend)


def apply_frozen_batchnorm_fold(model: nn.Module, train: TrainConfig, trial: torch.Tensor) -> str:
    """With `train.fold_frozen_batchnorm` (the default), fold the frozen BatchNorms of `model`
    into their convs, checked on the window `trial` `(1, C, D, H, W)`
    (`checked_fold_frozen_batchnorm`); returns a note for the log."""
    if not train.fold_frozen_batchnorm:
        return "frozen BatchNorm fold off (train.fold_frozen_batchnorm false)"
    return checked_fold_frozen_batchnorm(model, trial)[1]


def apply_channels_last(model: nn.Module, train: TrainConfig, device: torch.device) -> int:
    """With `train.channels_last` (None: on the CPU), the frozen 2D convs of `model` in
    channels-last memory format (`medtune.modeling.layout`); returns how many."""
    if not wants_channels_last(train.channels_last, device):
        return 0
    return channels_last_convs(model, frozen_only=True)
