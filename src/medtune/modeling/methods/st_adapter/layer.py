"""The ST-Adapter layer: bottleneck with a depthwise convolution across slices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtune.modeling.methods.adapter.layer import make_act
from medtune.modeling.slicing import SliceContext


class STAdapter(nn.Module):
    """Grid `(B*D, h, w, C)` -> same: `x + up(act(dwconv_(k,1,1)(down(x))))`.

    The depthwise conv across slices is `self.conv` (a `Conv3d(C', C', (k,1,1), groups=C')`
    with bias, the parameters and state-dict layout of the video ST-Adapter), evaluated in the
    channels-last slice layout as a sum of k shifted, per-channel-scaled copies: the same
    arithmetic as the conv, without unfolding to `(B, C', D, h, w)` (depthwise 3D convs are
    slow in half precision on GPUs). The up-projection is zero-initialised.
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

    def slice_conv(self, v: torch.Tensor) -> torch.Tensor:
        """`(B, D, h, w, C')` -> same: the depthwise (k,1,1) conv along D, zero-padded."""
        k = self.conv.kernel_size[0]
        depth = v.shape[1]
        weight = self.conv.weight.view(-1, k).to(v.dtype)  # (C', k)
        padded = F.pad(v, (0, 0, 0, 0, 0, 0, k // 2, k // 2))
        out = self.conv.bias.to(v.dtype) + padded[:, :depth] * weight[:, 0]
        for j in range(1, k):
            out = out + padded[:, j : j + depth] * weight[:, j]
        return out

    def forward(self, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        n, h, w, _ = x.shape
        v = self.down(x).reshape(ctx.batch, n // ctx.batch, h, w, -1)  # (B, D, h, w, C')
        v = self.act(self.slice_conv(v)).reshape(n, h, w, -1)
        return x + self.up(v)
