"""Channels-last weights for 2D convolutions: oneDNN's fast layout on the CPU.

With a conv's weight in `torch.channels_last` memory format, PyTorch runs the conv in the
NHWC layout and its output stays channels-last, so the next conv, the activations and the
Med-Adapters (which already work on channels-last views, `methods/med_adapter/layer.py`)
take it without reordering. Only the weights' memory layout changes: their values, shapes,
names and `state_dict` are the same. Measured on this project's 2-core CPU, the demo's
EfficientNet-Lite0 model (docs/performance.md, docs/inference.md): a training step 0.81x
(Med-Tuning) and 0.73x (head-only) as long, whole-volume prediction 0.74x.

Training converts the *frozen* convs only (`frozen_only`): trainable tensors are saved to
adapter files with safetensors, which takes contiguous tensors only. Prediction converts every
conv of its fused inference copy. Both do it on the CPU only by default (`train.channels_last`
None / `auto`); on CUDA it is not measured yet.
"""

from __future__ import annotations

import torch
from torch import nn


def wants_channels_last(setting: bool | None, device: torch.device | str) -> bool:
    """`setting`, or when None (automatic) whether `device` is the CPU."""
    if setting is not None:
        return bool(setting)
    return torch.device(device).type == "cpu"


def channels_last_convs(model: nn.Module, frozen_only: bool = True) -> int:
    """Put the weight of every `nn.Conv2d` of `model` (with `frozen_only`, those that do not
    require grad) in channels-last memory format, in place (same Parameter objects, same
    values); returns how many were converted."""
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Conv2d) or module.weight.dim() != 4:
            continue
        if frozen_only and module.weight.requires_grad:
            continue
        module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        count += 1
    return count
