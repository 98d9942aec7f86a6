"""VPT layers: prompt tokens for ViT token sequences and prompted Swin window attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medtune.modeling.slicing import SliceContext


def init_prompts(num: int, dim: int, patch_inputs: int) -> nn.Parameter:
    """`(P, C)` prompts drawn from U(-a, a), a = sqrt(6 / (patch_inputs + C)) as in VPT."""
    bound = math.sqrt(6.0 / float(patch_inputs + dim))
    return nn.Parameter(torch.empty(num, dim).uniform_(-bound, bound))


class PromptTokens(nn.Module):
    """`pre_block` hook for ViTs: tokens `(N, L, C)` -> `(N, P + L, C)` with the prompts in
    front (`replace=False`), or `(N, P + L, C)` -> same with the first P tokens replaced by this
    block's prompts (`replace=True`, VPT-Deep after the first block). The ViT wrapper keeps the
    extra front tokens out of the post-block hooks and the features."""

    def __init__(self, num: int, dim: int, patch_inputs: int, replace: bool, dropout: float):
        super().__init__()
        self.prompts = init_prompts(num, dim, patch_inputs)
        self.replace = replace
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        p = self.dropout(self.prompts).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        if self.replace:
            x = x[:, p.shape[1] :]
        return torch.cat([p, x], dim=1)


class PromptedWindowAttention(nn.Module):
    """Wraps a timm `WindowAttention`: windows `(nW*N, ws*ws, C)` -> same.

    The P prompts `(P, C)` (in the attention's input space, i.e. after the block's norm1) go
    through the frozen `qkv` projection; their keys and values are prepended to every window's
    keys and values (shared by all windows), so each window's queries also attend to the
    prompts. Prompt columns get zero relative-position bias and are never masked; the output
    holds only the window tokens, so window shapes, shifts and patch merging are unchanged.
    """

    def __init__(self, wrapped: nn.Module, num: int, patch_inputs: int, dropout: float):
        super().__init__()
        self.wrapped = wrapped
        self.prompts = init_prompts(num, wrapped.qkv.in_features, patch_inputs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.wrapped
        b_, n, _ = x.shape
        heads = a.num_heads
        q, k, v = a.qkv(x).reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        prompts = self.dropout(self.prompts).to(x.dtype)
        num = prompts.shape[0]
        pk, pv = a.qkv(prompts).reshape(num, 3, heads, -1).permute(1, 2, 0, 3)[1:].unbind(0)
        k = torch.cat([pk.unsqueeze(0).expand(b_, -1, -1, -1), k], dim=2)  # (B_, H, P+n, hd)
        v = torch.cat([pv.unsqueeze(0).expand(b_, -1, -1, -1), v], dim=2)
        bias = F.pad(a._get_rel_pos_bias(), (num, 0))  # (1, H, n, P+n)
        if mask is not None:
            nw = mask.shape[0]
            full = bias.unsqueeze(1) + F.pad(mask, (num, 0)).view(1, nw, 1, n, num + n)
            bias = full.expand(b_ // nw, -1, -1, -1, -1).reshape(b_, heads, n, num + n)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=a.attn_drop.p if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b_, n, -1)
        return a.proj_drop(a.proj(out))
