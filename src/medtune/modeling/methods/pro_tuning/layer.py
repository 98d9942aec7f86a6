"""Pro-tuning layers: the prompt block and the hooks that feed it a stage's input."""

from __future__ import annotations

import torch
from torch import nn

from medtune.modeling.methods.adapter.layer import make_act
from medtune.modeling.slicing import SliceContext


class PromptBlock(nn.Module):
    """Features `(N, C, h, w)` -> prompts `(N, C, h, w)`: 1x1 conv, depthwise k x k conv, act,
    1x1 conv, all with bias (2 C^2 + (k^2 + 3) C parameters). The last conv is zero-initialised,
    so the frozen model's output is unchanged at the start."""

    def __init__(self, channels: int, kernel: int = 5, act: str = "gelu"):
        super().__init__()
        self.pw1 = nn.Conv2d(channels, channels, 1)
        self.dw = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.act = make_act(act)
        self.pw2 = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.pw2.weight)
        nn.init.zeros_(self.pw2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.dw(self.pw1(x))))


class StashStageInput(nn.Module):
    """`pre_block` hook of a stage's first block: keeps the stage input in `ctx.state[key]`
    and returns it unchanged (ViT tokens `(N, L, C)`, Swin grid `(N, h, w, C)`)."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def forward(self, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        ctx.state[self.key] = x
        return x


class StagePrompt(nn.Module):
    """`post_block` hook of a stage's last block: grid `(N, h, w, C)` -> `grid + P(source)`.

    `source` is the stage input stashed under `key` (its last h*w tokens, as a grid), or the
    grid itself when `key` is None (CNN stages, whose input has other channels).
    """

    def __init__(self, channels: int, kernel: int, act: str, key: str | None):
        super().__init__()
        self.key = key
        self.prompt = PromptBlock(channels, kernel, act)

    def forward(self, grid: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        n, h, w, c = grid.shape
        src = grid if self.key is None else ctx.state.pop(self.key)
        src = src.reshape(n, -1, c)[:, -h * w :].reshape(n, h, w, c)
        prompt = self.prompt(src.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return grid + prompt
