"""Med-Adapter layers: multi-scale depthwise 3D convs, the Fourier depth filter, inter-stage
interaction, and the adapter that runs them on a block's slice tokens."""

from __future__ import annotations

import torch
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.slicing import SliceContext, grid_to_volume, volume_to_grid

STATE_KEY = "med_adapter.prev"


class MultiScaleBranch(nn.Module):
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


def _sorted_freqs(n: int) -> torch.Tensor:
    """Normalised FFT frequencies of length `n`, ascending (the fftshift order)."""
    return torch.fft.fftshift(torch.fft.fftfreq(n, dtype=torch.float64))


def resample_depth_filter(filt: torch.Tensor, depth: int) -> torch.Tensor:
    """Filter `(L,)` over the FFT bins of length L -> `(depth,)` over the bins of length `depth`.

    The filter is read as a function of normalised frequency (cycles per slice) and linearly
    interpolated at the target bins (clamped at the band edges); at `depth == L` it is
    returned unchanged.
    """
    length = filt.shape[0]
    if depth == length:
        return filt
    src = _sorted_freqs(length)
    order = torch.fft.fftshift(torch.arange(length))
    values = filt[order.to(filt.device)]  # ascending-frequency order
    target = torch.fft.fftfreq(depth, dtype=torch.float64)
    pos = ((target - src[0]) * length).clamp(0, length - 1)
    lo = pos.floor().long().clamp(max=length - 1)
    hi = (lo + 1).clamp(max=length - 1)
    frac = (pos - lo.double()).to(filt.dtype).to(filt.device)
    return values[lo.to(filt.device)] * (1 - frac) + values[hi.to(filt.device)] * frac


class FourierBranch(nn.Module):
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


class InterStage(nn.Module):
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


class MedAdapter(nn.Module):
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
        inter_stage: InterStage | None = None,
    ):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.multiscale = MultiScaleBranch(hidden, kernels) if multiscale else None
        self.fourier = FourierBranch(train_depth, depth_filter) if fourier else None
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
