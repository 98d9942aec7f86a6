"""The Med-Adapter's plain formula, for testing the fast layer against.

These are the layer's classes as they were before the rewrite for speed (Conv3d /
BatchNorm3d on the volume `(B, C', D, h, w)`, a 3D FFT, `grid_to_volume` permutes), kept
verbatim under other names. They build the same modules under the same names, so
`Ref*.load_state_dict(fast.state_dict())` (strict) both checks that the state-dict keys and
shapes are unchanged and lets both compute from the same weights.

Layouts: the reference hands the inter-stage state on as `(B, C', D, h, w)`, the fast layer
as channels-last `(B, D, h, w, C')`.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.methods.med_adapter.layer import STATE_KEY, resample_depth_filter
from medtune.modeling.slicing import SliceContext, grid_to_volume, volume_to_grid


class RefMultiScaleBranch(nn.Module):
    """`(B, C, D, h, w)` -> same: sum over k of ReLU(BN(dw(k,1,1)(dw(1,k,k)(x))))."""

    def __init__(self, channels: int, kernels: tuple[int, ...] = (3, 5)):
        super().__init__()
        self.paths = nn.ModuleList()
        for k in kernels:
            self.paths.append(
                nn.Sequential(
                    nn.Conv3d(
                        channels, channels, (1, k, k), padding=(0, k // 2, k // 2), groups=channels
                    ),
                    nn.Conv3d(
                        channels, channels, (k, 1, 1), padding=(k // 2, 0, 0), groups=channels
                    ),
                    nn.BatchNorm3d(channels),
                    nn.ReLU(inplace=True),
                )
            )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.paths[0](v)
        for path in self.paths[1:]:
            out = out + path(v)
        return out


class RefFourierBranch(nn.Module):
    """`(B, C, D, h, w)` -> same: |iFFT3(FFT3(v) * W_F + b_F)| with W_F, b_F over depth frequency.

    `W_F` and `b_F` are real, `(1, 1, L, 1, 1)` with L the training depth, initialised to ones
    (2 L parameters). Computed in float32 even inside autocast.
    """

    def __init__(self, train_depth: int, mode: str = "resample"):
        super().__init__()
        self.mode = mode
        self.weight = nn.Parameter(torch.ones(1, 1, train_depth, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, 1, train_depth, 1, 1))

    def filters(self, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(W_F, b_F)` for a window of `depth` slices, each `(1, 1, depth, 1, 1)`."""
        length = self.weight.shape[2]
        if depth != length and self.mode == "fixed":
            raise MedtuneInputError(
                f"med_adapter depth_filter 'fixed': the window has {depth} slices but the Fourier "
                f"filter was trained for {length}; use windows of {length} slices or depth_filter: resample"
            )
        w = resample_depth_filter(self.weight.view(-1).float(), depth).view(1, 1, depth, 1, 1)
        b = resample_depth_filter(self.bias.view(-1).float(), depth).view(1, 1, depth, 1, 1)
        return w, b

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        w, b = self.filters(v.shape[2])
        with torch.autocast(device_type=v.device.type, enabled=False):
            spec = torch.fft.fftn(v.float(), dim=(-3, -2, -1))
            out = torch.fft.ifftn(spec * w + b, dim=(-3, -2, -1)).abs()
        return out.to(v.dtype)


class RefInterStage(nn.Module):
    """Fuse this stage's `M (B, C, D, h, w)` with the previous stage's state.

    The previous state `(B, C_prev, D, r*h, r*w)` is aligned by a conv with bias (1x1x1 when
    `ratio == 1`; kernel (1,3,3), stride (1,r,r) otherwise), then concatenated after `M` and
    reduced by a 1x1x1 conv (`concat`), added (`add`) or maxed (`max`). With no previous state
    (the first stage end) the aligned state of a zero input is the conv's bias.
    """

    def __init__(self, channels: int, prev_channels: int, ratio: int, fusion: str = "concat"):
        super().__init__()
        if ratio == 1:
            self.align = nn.Conv3d(prev_channels, channels, 1)
        else:
            self.align = nn.Conv3d(
                prev_channels, channels, (1, 3, 3), stride=(1, ratio, ratio), padding=(0, 1, 1)
            )
        self.fusion = fusion
        self.reduce = nn.Conv3d(2 * channels, channels, 1) if fusion == "concat" else None

    def forward(self, m: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        if prev is None:
            aligned = self.align.bias.view(1, -1, 1, 1, 1).to(m.dtype).expand_as(m)
        else:
            aligned = self.align(prev)
        if self.fusion == "concat":
            return self.reduce(torch.cat([m, aligned], dim=1))
        if self.fusion == "add":
            return m + aligned
        return torch.maximum(m, aligned)


class RefMedAdapter(nn.Module):
    """Tokens `(B*D, h, w, C)` -> same: `x + GELU(up(V + M(V)))`, `V = GELU(down(x))` as a volume.

    `M` is the (fused) sum of the multi-scale and Fourier branches; a stage-end adapter also
    fuses the previous stage's state and hands its result on through `ctx.state`.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        train_depth: int,
        multiscale: bool = True,
        kernels: tuple[int, ...] = (3, 5),
        fourier: bool = True,
        fusion_conv: bool = True,
        depth_filter: str = "resample",
        inter_stage: RefInterStage | None = None,
    ):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.multiscale = RefMultiScaleBranch(hidden, kernels) if multiscale else None
        self.fourier = RefFourierBranch(train_depth, depth_filter) if fourier else None
        self.fuse = nn.Conv3d(hidden, hidden, 1) if fusion_conv else None
        self.inter_stage = inter_stage

    def forward(self, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        v = grid_to_volume(self.act(self.down(x)), ctx.batch)  # (B, C', D, h, w)
        m = None
        if self.multiscale is not None:
            m = self.multiscale(v)
        if self.fourier is not None:
            f = self.fourier(v)
            m = f if m is None else m + f
        if m is None:
            m = torch.zeros_like(v)
        if self.fuse is not None:
            m = self.fuse(m)
        if self.inter_stage is not None:
            m = self.inter_stage(m, ctx.state.get(STATE_KEY))
            ctx.state[STATE_KEY] = m
        return x + self.act(self.up(volume_to_grid(v + m)))


def ref_inter_stage(
    channels: int, prev_channels: int, ratio: int, depth_ratio: int, fusion: str
) -> RefInterStage:
    """`med_adapter.method.inter_stage` built from `RefInterStage` (native 3D: (3,3,3) align)."""
    module = RefInterStage(channels, prev_channels, ratio, fusion)
    if depth_ratio != 1:
        module.align = nn.Conv3d(
            prev_channels, channels, 3, stride=(depth_ratio, ratio, ratio), padding=1
        )
    return module
