"""Med-Adapter layers: multi-scale depthwise 3D convs, the Fourier depth filter, inter-stage
interaction, and the adapter that runs them on a block's slice tokens.

Everything runs on the adapter's hidden volume in one channels-last layout, `(B, D, h, w, C')`,
a view of `down(x)` on the slice grid `(B*D, h, w, C)`: no permuted copies to `(B, C', D, h, w)`.
The modules and parameters are those of the plain formulation (depthwise `Conv3d`s,
`BatchNorm3d`, a 3D FFT filter, 1x1x1 `Conv3d`s), so state dicts and parameter counts are
unchanged; the forward passes compute the same mathematics with cheaper operations:

- a depthwise `(1, k, k)` Conv3d is a depthwise `conv2d` over the `B*D` slices, and a depthwise
  `(k, 1, 1)` Conv3d a depthwise `(k, 1)` `conv2d` over `(D, h*w)`, both on channels-last views;
- a 1x1x1 Conv3d is a `linear` over the last dim, a `(1, 3, 3)` Conv3d a `conv2d` over slices;
- `BatchNorm3d` is called as it is, on the `(B, C', D, h, w)` view (channels_last_3d strides),
  so batch statistics, running-stat updates and eval mode are its own;
- the Fourier filter varies along depth only, so the 3D FFT reduces to a 1D FFT along D plus
  the bias's inverse transform at the spatial origin (see `FourierBranch`).

`tests/methods/med_adapter_reference.py` keeps the plain formula; the tests compare both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.slicing import SliceContext

STATE_KEY = "med_adapter.prev"
"""`ctx.state` key of the inter-stage state, channels-last `(B, D, h, w, C')`."""


def _to_slices(v: torch.Tensor) -> torch.Tensor:
    """`(B, D, h, w, C)` -> `(B*D, C, h, w)`, a channels_last view (no copy)."""
    b, d, h, w, c = v.shape
    return v.reshape(b * d, h, w, c).permute(0, 3, 1, 2)


def _from_slices(y: torch.Tensor, batch: int) -> torch.Tensor:
    """`(B*D, C, h, w)` -> `(B, D, h, w, C)` (a view when `y` is channels_last)."""
    n, c, h, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(batch, n // batch, h, w, c)


def spatial_conv(conv: nn.Conv3d, v: torch.Tensor) -> torch.Tensor:
    """`(B, D, h, w, C_in)` -> `(B, D, h', w', C_out)`: a Conv3d of depth kernel, stride 1 and
    no depth padding, i.e. a `(1, kh, kw)` conv, as a `conv2d` over the `B*D` slices."""
    y = F.conv2d(
        _to_slices(v),
        conv.weight.squeeze(2),
        conv.bias,
        stride=conv.stride[1:],
        padding=conv.padding[1:],
        dilation=conv.dilation[1:],
        groups=conv.groups,
    )
    return _from_slices(y, v.shape[0])


def depth_conv(conv: nn.Conv3d, v: torch.Tensor) -> torch.Tensor:
    """`(B, D, h, w, C)` -> same: the depthwise `(k, 1, 1)` Conv3d (zero-padded `k // 2`, with
    bias) as a depthwise `(k, 1)` `conv2d` over `(D, h*w)` on a channels-last view."""
    b, d, h, w, c = v.shape
    k = conv.kernel_size[0]
    x = v.reshape(b, d, h * w, c).permute(0, 3, 1, 2)  # (B, C, D, h*w), channels_last
    y = F.conv2d(x, conv.weight.view(c, 1, k, 1), conv.bias, padding=(conv.padding[0], 0), groups=c)
    return y.permute(0, 2, 3, 1).reshape(b, d, h, w, c)


def pointwise(conv: nn.Conv3d, v: torch.Tensor) -> torch.Tensor:
    """`(..., C_in)` -> `(..., C_out)`: a 1x1x1 Conv3d as a linear map over the last dim."""
    return F.linear(v, conv.weight.view(conv.out_channels, -1), conv.bias)


def _is_pointwise(conv: nn.Conv3d) -> bool:
    return conv.kernel_size == (1, 1, 1) and conv.stride == (1, 1, 1) and conv.groups == 1


def _is_per_slice(conv: nn.Conv3d) -> bool:
    return conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.padding[0] == 0


def channels_last_conv(conv: nn.Conv3d, v: torch.Tensor) -> torch.Tensor:
    """Any Conv3d applied to channels-last `(B, D, h, w, C_in)` -> `(B, D', h', w', C_out)`:
    a linear map (1x1x1), a `conv2d` over slices (`(1, kh, kw)`), else the Conv3d itself on
    the permuted view (e.g. the (3,3,3) stride-2 alignment of native 3D backbones)."""
    if _is_pointwise(conv):
        return pointwise(conv, v)
    if _is_per_slice(conv) and isinstance(conv.padding, tuple):
        return spatial_conv(conv, v)
    return conv(v.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


class MultiScaleBranch(nn.Module):
    """`(B, D, h, w, C)` -> same: sum over k of ReLU(BN(dw(k,1,1)(dw(1,k,k)(v)))).

    `paths[i]` holds `Conv3d (1,k,k)`, `Conv3d (k,1,1)`, `BatchNorm3d`, `ReLU` (the plain
    formulation's modules and state-dict keys); forward runs them on channels-last views.
    """

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

    @staticmethod
    def path_forward(path: nn.Sequential, v: torch.Tensor) -> torch.Tensor:
        """One path on `(B, D, h, w, C)`. `path[2]` is called as a module on the
        `(B, C, D, h, w)` view, so a `SyncBatchNorm` or a folded-away `Identity` (inference
        BatchNorm folding into `path[1]`) work unchanged."""
        y = depth_conv(path[1], spatial_conv(path[0], v))
        y = path[2](y.permute(0, 4, 1, 2, 3))  # (B, C, D, h, w), channels_last_3d strides
        return path[3](y).permute(0, 2, 3, 4, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.path_forward(self.paths[0], v)
        for path in self.paths[1:]:
            out = out + self.path_forward(path, v)
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
    """`(B, D, h, w, C)` -> same: |iFFT3(FFT3(v) * W_F + b_F)| with W_F, b_F over depth frequency.

    `W_F` and `b_F` are real, `(1, 1, L, 1, 1)` with L the training depth, initialised to ones
    (2 L parameters). Computed in float32 even inside autocast.

    Both vary along depth frequency only, so by linearity
    `iFFT3(FFT3(v) W) = iFFT_D(FFT_D(v) W)` (the (h, w) transforms cancel), and the inverse
    3D transform of `b(f_d)`, constant over the (h, w) frequencies, is `iFFT_D(b)` at the
    spatial origin `(h, w) = (0, 0)` and zero elsewhere (the 'backward' norm's 1/(h w) sum of
    a constant). So the output is `|iFFT_D(FFT_D(v) W) + delta_(0,0) iFFT_D(b)|`: one 1D
    complex FFT pair along D (not rfft: W is not symmetric, the result is complex).
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
        depth = v.shape[1]
        w, b = self.filters(depth)
        with torch.autocast(device_type=v.device.type, enabled=False):
            # fftn over the one dim D is the 1D fft along D (test_models.py spies on fftn dtypes)
            spec = torch.fft.fftn(v.float(), dim=(1,))  # (B, D, h, w, C) complex
            out = torch.fft.ifftn(spec * w.view(depth, 1, 1, 1), dim=(1,))
            impulse = torch.fft.ifftn(b.view(depth).to(spec.dtype), dim=(0,))  # (D,)
            out[:, :, 0, 0, :] += impulse.unsqueeze(-1)
            out = out.abs()
        return out.to(v.dtype)


class InterStage(nn.Module):
    """Fuse this stage's `M (B, D, h, w, C)` with the previous stage's state.

    The previous state `(B, D', r*h, r*w, C_prev)` (channels-last, as `MedAdapter` stores it)
    is aligned by a conv with bias (1x1x1 when `ratio == 1`; kernel (1,3,3), stride (1,r,r)
    otherwise; native 3D families: (3,3,3) strided along depth too), then concatenated after
    `M` and reduced by a 1x1x1 conv (`concat`), added (`add`) or maxed (`max`). With no
    previous state (the first stage end) the aligned state of a zero input is the conv's bias.
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
        c = m.shape[-1]
        if self.fusion == "concat":
            # reduce(cat[m, a]) = W[:, :C] m + W[:, C:] a + bias, without the concatenation
            weight = self.reduce.weight.view(c, 2 * c)
            w_m, w_a = weight[:, :c], weight[:, c:]
            if prev is None:  # a = align.bias everywhere: its term joins the bias
                return F.linear(m, w_m, self.reduce.bias + w_a @ self.align.bias)
            aligned = channels_last_conv(self.align, prev)
            return torch.addmm(self.reduce.bias, aligned.reshape(-1, c), w_a.t()).view_as(
                m
            ) + F.linear(m, w_m)
        aligned = (
            self.align.bias.to(m.dtype) if prev is None else channels_last_conv(self.align, prev)
        )
        if self.fusion == "add":
            return m + aligned
        return torch.maximum(m, aligned.expand_as(m))


class MedAdapter(nn.Module):
    """Tokens `(B*D, h, w, C)` -> same: `x + GELU(up(V + M(V)))`, `V = GELU(down(x))` as a volume.

    `V` is the channels-last view `(B, D, h, w, C')` of `down(x)`. `M` is the (fused) sum of
    the multi-scale and Fourier branches; a stage-end adapter also fuses the previous stage's
    state and hands its result on through `ctx.state[STATE_KEY]`, `(B, D, h, w, C')`.
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
        n, h, w, _ = x.shape
        v = self.act(self.down(x)).view(ctx.batch, n // ctx.batch, h, w, -1)  # (B, D, h, w, C')
        m = None
        if self.multiscale is not None:
            m = self.multiscale(v)
        if self.fourier is not None:
            f = self.fourier(v)
            m = f if m is None else m + f
        if m is None:
            m = torch.zeros_like(v)
        if self.fuse is not None:
            m = pointwise(self.fuse, m)
        if self.inter_stage is not None:
            m = self.inter_stage(m, ctx.state.get(STATE_KEY))
            ctx.state[STATE_KEY] = m
        return x + self.act(self.up((v + m).view(n, h, w, -1)))
