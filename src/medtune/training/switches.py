"""The opt-in speed switches of `TrainConfig`, applied to a model without Lightning: one
mechanism for training (`medtune.training.module`) and `medtune bench`."""

from __future__ import annotations

from torch import nn

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
