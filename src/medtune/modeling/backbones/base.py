"""The backbone contract: what tuning methods, decoders and the model may ask of a backbone.

`Backbone` wraps one timm model (or, for native 3D families, a volumetric encoder) and declares

- `insertion_points`: one per block after which a tuning method may insert a module, with the
  block's channels, stride, stage and whether it ends a stage;
- `feature_info`: channels, strides (and attention heads, where there are any) of the
  multi-scale features handed to the decoder;
- `capabilities`: which kinds of insertion the family offers (methods declare what they
  require, so a method either works on a family or refuses with the reason):
  `pre_block` (hooks before each block on the native token layout), `transformer_blocks`
  (blocks with `.attn` and `.mlp` sub-modules, `transformer_blocks()`), `prompt_tokens`
  (a token sequence that prompts can join), `window_attention` (timm window attention);
- `default_decoder`: the decoder `decoder.name: auto` picks; `stage_blocks()`: pre-trained
  blocks per stage that a symmetric decoder may initialise from; `window_size`;
- which of its parameters the paper tunes anyway (`tuned_extra_names`), the input conv
  adapted to the channel count (`input_conv_name`);
- `folds_slices`: True for 2D families (`SliceBackbone`): the model folds a volume into
  `(B*D, C, H, W)` slices before the backbone and unfolds the logits after the decoder; a
  native 3D family (`VolumeBackbone`) sets it False and takes the volume `(B, C, D, H, W)` as
  it is (its decoder returns `(B, K, D, H, W)`). `offers()` adds the derived capability
  `slices` to the 2D families, so methods built for slices can require it;
- which timm models it runs (`timm_modules`, `timm_classes`), the timm keyword arguments it
  builds them with (`build_kwargs`), how a checkpoint in the source's layout is fitted to it
  (`fit_state_dict`, by default the timm module's own `checkpoint_filter_fn`), and `notes`
  (what the family changed, e.g. padding; said in the load report).

Methods insert modules in two places that every family calls in its forward pass:
`post_block[str(i)]` (called after block `i` on a channels-last grid `(N, h, w, C)`) and
`pre_block[str(i)]` (called before block `i` on the family's native token layout; used by
prompt methods). Both receive the `SliceContext` of the current forward pass.

A native 3D family calls `post_block` modules on the same layout: its stage grid
`(B, D', h, w, C)` is handed over as the `B*D'` slices `(B*D', h, w, C)` with a context whose
`depth` is the stage's own depth `D'` (`VolumeBackbone.run_post_volume`), so a module that
unfolds slices into a volume (`grid_to_volume`) sees the stage's volume `(B, C, D', h, w)`;
`InsertionPoint.depth_stride` says how much that depth is reduced (2D families: 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from medtune.core.errors import MedtuneInputError
from medtune.modeling.slicing import SliceContext


@dataclass(frozen=True)
class InsertionPoint:
    """Where a method may insert a module: after block `index` of the backbone."""

    index: int
    """Position of the block in forward order (0-based)."""
    channels: int
    """Channels of the block's output."""
    stride: int
    """Spatial stride of the block's output relative to the slice."""
    stage: int
    """Stage (resolution level or block group) the block belongs to."""
    stage_end: bool
    """True for the last block of its stage."""
    depth_stride: int = 1
    """Stride of the block's output along the volume depth D (2D families keep every slice: 1;
    a native 3D family downsamples depth like h and w)."""


@dataclass(frozen=True)
class FeatureInfo:
    """One multi-scale feature map handed to the decoder: `(N, channels, H/stride, W/stride)`."""

    channels: int
    stride: int
    num_heads: int | None = None
    """Attention heads of the stage that produced it (None: not an attention stage)."""


CAPABILITIES = ("pre_block", "transformer_blocks", "prompt_tokens", "window_attention", "slices")
"""Kinds of insertion a family may offer (see the module docstring); `slices` is derived from
`folds_slices` by `Backbone.offers()`, never declared."""


def running_stats(modules: list[nn.Module]) -> list[torch.Tensor]:
    """Running-statistics buffers (mean, variance, count) of the BatchNorm layers in training
    mode among `modules`: what a forward pass updates in place."""
    return [
        buf
        for mod in modules
        for m in mod.modules()
        if isinstance(m, _BatchNorm) and m.training
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]


def checkpointed(fn: Callable[..., Any], modules: list[nn.Module], *args: Any) -> Any:
    """`fn(*args)` under non-reentrant `torch.utils.checkpoint`: only the inputs are kept and
    the backward pass runs `fn` again. `modules` are those `fn` runs; the running statistics
    of their BatchNorm layers are reset to their values before the first pass at the start of
    every pass, so the recomputation (which normalises with the same batch statistics: outputs
    and gradients unchanged) leaves them as the first pass did instead of updating them a
    second time. Eager and under `torch.compile` (no recomputation hooks needed)."""
    stats = running_stats(modules)

    def region(before: list[torch.Tensor], *inputs: Any) -> Any:
        with torch.no_grad():
            for buf, value in zip(stats, before):
                buf.copy_(value)
        return fn(*inputs)

    before = [buf.clone() for buf in stats]
    return checkpoint(region, before, *args, use_reentrant=False)


class Backbone(nn.Module):
    """Base class of every backbone family; subclasses implement `forward_features`.

    Attributes set by subclasses: `insertion_points`, `feature_info`, and the class-level
    `family`, `capabilities`, `default_decoder`, `folds_slices`.
    """

    family: ClassVar[str] = ""
    """Family name (for reports and adapter configs; code asks `capabilities` instead)."""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    """What methods may insert (see `CAPABILITIES`)."""
    default_decoder: ClassVar[str] = "unet"
    """The decoder `decoder.name: auto` picks for this family."""
    folds_slices: ClassVar[bool] = True
    """True: runs over slices `(B*D, C, H, W)`; False: over volumes `(B, C, D, H, W)`."""
    timm_modules: ClassVar[tuple[str, ...]] = ()
    """timm model modules whose models this family runs (`timm.list_models(module=...)`)."""
    timm_classes: ClassVar[tuple[str, ...]] = ()
    """timm model classes this family wraps (any other class is refused)."""
    capability_notes: ClassVar[dict[str, str]] = {}
    """Why the family lacks a capability; added to a method's refusal."""
    takes_img_size: ClassVar[bool] = False
    """True: timm builds the model for one input size (`img_size`: position tables, masks)."""

    @classmethod
    def build_kwargs(cls, timm_name: str) -> dict[str, Any]:
        """timm keyword arguments the family needs (a preset's and the config's override them)."""
        return {}

    def __init__(
        self, model: nn.Module, name: str, timm_name: str, in_chans: int, img_size: int
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        """The preset or model name the config asked for (`backbone.name`)."""
        self.timm_name = timm_name
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = 1
        """Pixels per side of one input token (ViT/Swin patch; 1 for CNNs)."""
        self.window_size: int | None = None
        """Attention window of windowed-attention families, else None."""
        self.pre_block = nn.ModuleDict()
        self.post_block = nn.ModuleDict()
        self.insertion_points: list[InsertionPoint] = []
        self.feature_info: list[FeatureInfo] = []
        self.notes: list[str] = []
        """What the family changed about the timm model or its input (in the load report)."""
        self.activation_checkpointing = False
        """Recompute each block with its inserted modules in the backward pass instead of
        keeping their activations (`train.activation_checkpointing`; training only)."""

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing of the blocks on or off (see `run_checkpointed`)."""
        self.activation_checkpointing = bool(enabled)

    def run_checkpointed(
        self, i: int, fn: Callable[..., Any], *args: Any, ctx: SliceContext, block: nn.Module
    ) -> Any:
        """`fn(*args, ctx)`: frozen block `i` (`block`) with the modules inserted before and
        after it.

        With `activation_checkpointing` in training, it runs under `torch.utils.checkpoint`
        (non-reentrant): only its inputs are kept, and the backward pass runs it again. The
        recomputation starts from the `ctx.state` the block first saw (methods hand state
        from block to block through it) and leaves BatchNorm running statistics as the first
        pass did (`checkpointed`); dropout and drop-path draw the same numbers (checkpoint
        restores the RNG state)."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return fn(*args, ctx)
        key = str(i)
        modules = [block] + [d[key] for d in (self.pre_block, self.post_block) if key in d]

        def region(state: dict[str, Any], *inputs: Any) -> tuple[Any, dict[str, Any]]:
            # a context of its own: the region changes nothing outside it (torch.compile's
            # checkpoint refuses side effects), and a recomputation sees the state it first saw
            local = SliceContext(batch=ctx.batch, depth=ctx.depth, state=dict(state))
            return fn(*inputs, local), local.state

        out, state = checkpointed(region, modules, dict(ctx.state), *args)
        ctx.state.clear()
        ctx.state.update(state)
        return out

    def offers(self) -> frozenset[str]:
        """`capabilities`, plus `slices` when the family runs over the slices of the volume."""
        return self.capabilities | ({"slices"} if self.folds_slices else frozenset())

    def check_crop(self, crop: tuple[int, int, int]) -> None:
        """Raise when a training crop / inference window `(D, H, W)` cannot run through this
        backbone; the message names the sizes that would."""

    # --- method hooks -------------------------------------------------------------------
    def run_pre(self, i: int, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        """Apply the module inserted before block `i`, if any (native layout)."""
        mod = self.pre_block[str(i)] if str(i) in self.pre_block else None
        return x if mod is None else mod(x, ctx)

    def run_post(self, i: int, grid: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        """Apply the module inserted after block `i`, if any, on `(N, h, w, C)`."""
        mod = self.post_block[str(i)] if str(i) in self.post_block else None
        return grid if mod is None else mod(grid, ctx)

    # --- contract -----------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        """Slices `(N, C, H, W)` -> feature maps `[(N, C_i, H/s_i, W/s_i)]` per `feature_info`."""
        raise NotImplementedError

    def transformer_blocks(self) -> list[nn.Module]:
        """Transformer blocks in forward order (index = insertion-point index), each with
        `.attn` and `.mlp`; families without the `transformer_blocks` capability raise."""
        raise MedtuneInputError(f"backbone {self.name} ({self.family}) has no transformer blocks")

    def stage_blocks(self) -> list[list[nn.Module]]:
        """Pre-trained blocks of each stage (a symmetric decoder may copy them); [] if none."""
        return []

    def tuned_extra_names(self) -> list[str]:
        """Names (relative to this module) of encoder parameters the paper tunes with the head."""
        return []

    def input_conv_name(self) -> str:
        """State-dict prefix of the first convolution (adapted to the input channels)."""
        raise NotImplementedError

    def stage_hidden_info(self) -> dict[str, int]:
        """Extra per-family facts methods may need (e.g. the zero-state ratio of stage 0)."""
        return {}

    def fit_state_dict(
        self, sd: dict[str, torch.Tensor], report: list[str]
    ) -> dict[str, torch.Tensor]:
        """A checkpoint in its source's layout -> this backbone's names and shapes.

        Default: the `checkpoint_filter_fn` of the timm module that defines the model (timm's
        own conversions of released layouts and its resizing), where timm has one.
        """
        module = sys.modules.get(type(self.model).__module__)
        fn = getattr(module, "checkpoint_filter_fn", None)
        return dict(fn(sd, self.model)) if fn is not None else sd


class SliceBackbone(Backbone):
    """A 2D family run over the slices `(N, C, H, W)` of volumes, `N = B * D`."""

    folds_slices: ClassVar[bool] = True

    pads_to_patch: ClassVar[bool] = False
    """True: a slice size that is not a multiple of `size_divisor` is zero-padded to the next
    multiple (`pad_slices`) and the model crops the logits back."""

    def forward(self, x: torch.Tensor, ctx: SliceContext | None = None) -> list[torch.Tensor]:
        x = self.pad_slices(x)
        self.check_input(x)
        if ctx is None:
            ctx = SliceContext(batch=x.shape[0], depth=1)
        return self.forward_features(x, ctx)

    def padded_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The slice size `(H', W')` the backbone runs at for slices of size `hw`."""
        if not self.pads_to_patch:
            return hw
        div = self.size_divisor
        return (-(-hw[0] // div) * div, -(-hw[1] // div) * div)

    def pad_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Slices `(N, C, H, W)` -> `(N, C, H', W')`, zero-padded at the bottom and right."""
        hh, ww = self.padded_size(tuple(x.shape[-2:]))
        if (hh, ww) == tuple(x.shape[-2:]):
            return x
        return F.pad(x, (0, ww - x.shape[-1], 0, hh - x.shape[-2]))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line error when slices do not fit the backbone."""
        if x.ndim != 4:
            raise MedtuneInputError(
                f"backbone input: expected slices (N, C, H, W), found shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise MedtuneInputError(
                f"backbone {self.timm_name}: expected {self.in_chans} input channels, found {x.shape[1]}"
            )
        self.check_slice_size(tuple(x.shape[-2:]))

    def check_slice_size(self, hw: tuple[int, int]) -> None:
        """Raise when a slice size `(H, W)` cannot run through this backbone."""
        div = self.size_divisor
        if hw[0] % div or hw[1] % div:
            raise MedtuneInputError(
                f"backbone {self.timm_name}: slice size {hw[0]}x{hw[1]} is not divisible by {div} "
                f"(patch size x downsampling); use a crop size that is a multiple of {div}"
            )

    @property
    def size_divisor(self) -> int:
        """Slice sizes must be multiples of this."""
        return max(f.stride for f in self.feature_info)

    def check_crop(self, crop: tuple[int, int, int]) -> None:
        self.check_slice_size((crop[1], crop[2]))


def _multiples_near(n: int, div: int) -> str:
    """`'96 or 128'`: the multiples of `div` next to `n`."""
    lo = max(div, n // div * div)
    hi = lo + div if lo <= n else lo
    return f"{lo} or {hi}" if lo != hi else str(lo)


class VolumeBackbone(Backbone):
    """A native 3D family run over volumes `(B, C, D, H, W)` (no slice folding).

    Its `forward_features` returns volumetric features `[(B, C_i, D/s_i, H/s_i, W/s_i)]` per
    `feature_info` and calls the methods' `post_block` modules through `run_post_volume`.
    """

    folds_slices: ClassVar[bool] = False

    def forward(self, x: torch.Tensor, ctx: SliceContext | None = None) -> list[torch.Tensor]:
        self.check_input(x)
        if ctx is None:
            ctx = SliceContext(batch=x.shape[0], depth=x.shape[2])
        return self.forward_features(x, ctx)

    @property
    def size_divisor(self) -> int:
        """Every spatial size (D, H and W) must be a multiple of this."""
        return max(f.stride for f in self.feature_info)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line error when a volume does not fit the backbone."""
        if x.ndim != 5:
            raise MedtuneInputError(
                f"backbone {self.name}: expected a volume (B, C, D, H, W), found shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise MedtuneInputError(
                f"backbone {self.name}: expected {self.in_chans} input channels, found {x.shape[1]}"
            )
        self.check_volume_size(tuple(x.shape[2:]))

    def check_volume_size(self, dhw: tuple[int, ...], what: str = "volume size") -> None:
        """Raise when a spatial size `(D, H, W)` is not a multiple of `size_divisor` per axis."""
        div = self.size_divisor
        bad = [(axis, n) for axis, n in zip("DHW", dhw) if n % div]
        if bad:
            fix = ", ".join(f"{a} {n} -> {_multiples_near(n, div)}" for a, n in bad)
            raise MedtuneInputError(
                f"backbone {self.name}: {what} {'x'.join(map(str, dhw))} is not divisible by {div} "
                f"along every axis (patch size x downsampling); sizes that work: {fix}"
            )

    def check_crop(self, crop: tuple[int, int, int]) -> None:
        self.check_volume_size(tuple(crop), "crop size (data.crop_size)")

    def run_post_volume(self, i: int, x: torch.Tensor, ctx: SliceContext) -> torch.Tensor:
        """Apply the module inserted after block `i` to a stage grid `(B, D', h, w, C)`.

        The module sees the grid's `B*D'` slices `(B*D', h, w, C)` with `ctx.depth = D'`
        (the inter-stage `ctx.state` is shared), exactly the layout 2D families hand over.
        """
        if str(i) not in self.post_block:
            return x
        b, d, h, w, c = x.shape
        stage_ctx = SliceContext(batch=b, depth=d, state=ctx.state)
        out = self.post_block[str(i)](x.reshape(b * d, h, w, c), stage_ctx)
        return out.reshape(b, d, h, w, -1)


def stage_of_points(points: list[InsertionPoint]) -> dict[int, list[InsertionPoint]]:
    """Group insertion points by stage, in order."""
    out: dict[int, list[InsertionPoint]] = {}
    for p in points:
        out.setdefault(p.stage, []).append(p)
    return out


def select_stages(
    points: list[InsertionPoint], wanted: tuple[int, ...] | None, what: str
) -> dict[int, list[InsertionPoint]]:
    """The insertion points of the `wanted` stages (None: all), grouped by stage, in order.

    A stage the backbone does not have raises, naming the config field `what`.
    """
    stages = stage_of_points(points)
    if wanted is None:
        return stages
    unknown = set(wanted) - set(stages)
    if unknown:
        raise MedtuneInputError(
            f"{what}: stages {sorted(unknown)} do not exist; this backbone has stages 0..{len(stages) - 1}"
        )
    return {s: pts for s, pts in stages.items() if s in set(wanted)}
