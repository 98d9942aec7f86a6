"""The ST-Adapter layer: bottleneck with a depthwise convolution across slices."""

from __future__ import annotations

import torch
from torch import nn

from medtune.backbones.base import SliceContext, grid_to_volume, volume_to_grid
from medtune.methods.adapter.layer import make_act


class STAdapter(nn.Module):
    """Grid `(B*D, h, w, C)` -> same: `x + up(act(dwconv_(k,1,1)(down(x))))`.

    `down(x)` `(B*D, h, w, C')` is unfolded to a volume `(B, C', D, h, w)` for the depthwise
    conv across slices, then folded back. The up-projection is zero-initialised.
    """

    def __init__(self, dim: int, hidden: int, kernel: int = 3, act: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(
            hidden, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=hidden
        )
        self.act = make_act(act)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        v = grid_to_volume(self.down(x), ctx.batch)  # (B, C', D, h, w)
        v = self.act(self.conv(v))
        return x + self.up(volume_to_grid(v))
