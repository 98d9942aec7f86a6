"""Bottleneck adapter layers and the wrappers that place them around transformer sub-blocks.

The wrappers keep the wrapped frozen module as `.wrapped` (a name `medtune.artifacts.adapters` strips when
it computes canonical tensor names, so the backbone hash does not depend on the method).
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.modeling.methods.base import Activation

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "none": nn.Identity,
}
"""One module class per `Activation` name (the config fields' type checks the name)."""


def make_act(name: Activation) -> nn.Module:
    """Activation module by name (`gelu`, `relu`, `silu`, `none`)."""
    return ACTIVATIONS[name]()


class Bottleneck(nn.Module):
    """Tokens `(..., C)` -> `(..., C)`: `up(act(down(x)))`, up-projection zero-initialised."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class SequentialAdapter(nn.Module):
    """Wraps a sub-block `f`: `y = f(...)`, returns `y + adapter(y)` (Houlsby placement).

    ViT: `f` is `blk.attn` on `(N, L, C)` or `blk.mlp`; Swin: `blk.attn` runs on windows
    `(nW*N, ws*ws, C)` (the adapter is token-wise, so windows do not matter) or `blk.mlp` on
    `(N, h, w, C)`.
    """

    def __init__(self, wrapped: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.wrapped = wrapped
        self.adapter = adapter

    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = self.wrapped(*args, **kwargs)
        return y + self.adapter(y)


class ParallelAdapter(nn.Module):
    """Wraps an MLP `f`: returns `f(x) + s * adapter(x)` (AdaptFormer), `x` the MLP input."""

    def __init__(self, wrapped: nn.Module, adapter: Bottleneck, scale: float, learnable: bool):
        super().__init__()
        self.wrapped = wrapped
        self.adapter = adapter
        if learnable:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(x) + self.scale.to(x.dtype) * self.adapter(x)
