"""MONAI's Swin UNETR encoder (`SwinUNETR.swinViT`, a 3D `SwinTransformer`) as a native 3D family.

The volume `(B, C, D, H, W)` goes in as it is (no slice folding). Patch embedding (2x2x2) and
four stages of 3D shifted-window blocks, each stage ending in a patch merging that halves D, H
and W and doubles the channels. Features handed to the decoder, as MONAI's `SwinUNETR` uses
them (`F` = `feature_size`):

    input             (B, C_in, D, H, W)            stride 1 (the decoder's first skip)
    patch embedding   (B, F,    D/2,  H/2,  W/2)    stride 2
    stage s output    (B, 2^(s+1) F, D/2^(s+2), ...)  strides 4, 8, 16, 32

each but the input normalised by a parameter-free LayerNorm over channels (MONAI's
`normalize=True`). Methods' `post_block` modules run after every block on the stage grid
`(B, D', h, w, C)`, handed over as slices (`VolumeBackbone.run_post_volume`), so a Med-Adapter
mixes over the stage's own depth `D'`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import FeatureInfo, InsertionPoint, VolumeBackbone
from medtune.modeling.slicing import SliceContext

MONAI_CLASS = "monai.networks.nets.swin_unetr.SwinTransformer"
PATCH = 2
STAGES = 4
# SwinUNETR's own argument names that choose the encoder (backbone.timm_kwargs may set them).
ENCODER_ARGS = {
    "feature_size": "embed_dim",
    "depths": "depths",
    "num_heads": "num_heads",
    "window_size": "window_size",
    "mlp_ratio": "mlp_ratio",
    "qkv_bias": "qkv_bias",
    "drop_rate": "drop_rate",
    "attn_drop_rate": "attn_drop_rate",
    "dropout_path_rate": "drop_path_rate",
    "patch_norm": "patch_norm",
    "use_checkpoint": "use_checkpoint",
    "downsample": "downsample",
    "use_flash_attention": "use_flash_attention",
}
REFUSED_ARGS = {
    "in_channels": "set model.backbone.in_chans",
    "out_channels": "set model.num_classes",
    "img_size": "set model.backbone.img_size (H = W of the crop)",
    "spatial_dims": "this family is native 3D",
    "patch_size": f"the Swin UNETR decoder restores the resolution with x2 steps, so the patch is {PATCH}",
    "norm_name": "it belongs to the decoder: set model.decoder.options.norm_name",
    "use_v2": "the v2 residual conv blocks before each stage are not supported by this family",
    "use_hyena": "Hyena blocks have no windowed attention; this family runs Swin blocks",
    "hyena_stages": "Hyena blocks have no windowed attention; this family runs Swin blocks",
}


def encoder_kwargs(name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """SwinUNETR-style options -> (MONAI `SwinTransformer` kwargs, `normalize`), validated."""
    kwargs = dict(kwargs)
    normalize = bool(kwargs.pop("normalize", True))
    for key in kwargs:
        if key in REFUSED_ARGS:
            raise MedtuneInputError(
                f"backbone {name}: option '{key}' is not accepted: {REFUSED_ARGS[key]}"
            )
        if key not in ENCODER_ARGS:
            raise MedtuneInputError(
                f"backbone {name}: unknown option '{key}'; Swin UNETR options: "
                f"{', '.join(sorted([*ENCODER_ARGS, 'normalize']))}"
            )
    out = {ENCODER_ARGS[k]: v for k, v in kwargs.items()}
    fs = out["embed_dim"] = int(out.get("embed_dim", 48))
    if fs % 12:
        raise MedtuneInputError(
            f"backbone {name}: feature_size {fs} is not a multiple of 12 (MONAI's Swin UNETR); "
            f"use {max(12, fs // 12 * 12)} or {fs // 12 * 12 + 12}"
        )
    for key, default in (("depths", (2, 2, 2, 2)), ("num_heads", (3, 6, 12, 24))):
        v = tuple(int(n) for n in out.get(key, default))
        if len(v) != STAGES or min(v) < 1:
            raise MedtuneInputError(
                f"backbone {name}: {key} must give {STAGES} positive numbers (one per stage), found {list(v)}"
            )
        out[key] = v
    win = out.get("window_size", 7)
    win = (int(win),) * 3 if isinstance(win, (int, float)) else tuple(int(w) for w in win)
    if len(win) != 3 or min(win) < 1:
        raise MedtuneInputError(
            f"backbone {name}: window_size must be one or three positive ints, found {win}"
        )
    out["window_size"] = win
    return out, normalize


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the channels of `(B, C, D, H, W)` (MONAI's `proj_out`)."""
    return F.layer_norm(x.permute(0, 2, 3, 4, 1), x.shape[1:2]).permute(0, 4, 1, 2, 3)


class SwinUNETRBackbone(VolumeBackbone):
    """MONAI's 3D Swin Transformer encoder of Swin UNETR, run over volumes."""

    family = "swin_unetr"
    capabilities = frozenset({"transformer_blocks"})
    default_decoder = "swin_unetr"

    def __init__(
        self, model: nn.Module, name: str, in_chans: int, img_size: int, normalize: bool = True
    ):
        super().__init__(model, name, MONAI_CLASS, in_chans, img_size)
        self.patch_size = PATCH
        self.normalize = normalize
        """Normalise the features handed to the decoder (MONAI's `SwinUNETR(normalize=True)`)."""
        self.stages = [getattr(model, f"layers{s + 1}")[0] for s in range(STAGES)]
        idx = 0
        heads = []
        for s, layer in enumerate(self.stages):
            dim = layer.blocks[0].dim
            stride = PATCH * 2**s
            heads.append(layer.blocks[0].num_heads)
            for b in range(len(layer.blocks)):
                last = b == len(layer.blocks) - 1
                self.insertion_points.append(InsertionPoint(idx, dim, stride, s, last, stride))
                idx += 1
        embed = model.embed_dim
        self.feature_info = [FeatureInfo(in_chans, 1), FeatureInfo(embed, PATCH)] + [
            FeatureInfo(embed * 2 ** (s + 1), PATCH * 2 ** (s + 1), heads[s]) for s in range(STAGES)
        ]
        win = tuple(self.stages[0].window_size)
        self.window_size = win[0] if len(set(win)) == 1 else None

    @classmethod
    def build(cls, preset, cfg) -> SwinUNETRBackbone:
        """The backbone of `cfg` (a `BackboneConfig`) from its preset, randomly initialised."""
        from monai.networks.nets.swin_unetr import SwinTransformer

        kwargs, normalize = encoder_kwargs(cfg.name, {**preset.kwargs, **cfg.timm_kwargs})
        if cfg.img_size % (PATCH * 2**STAGES):
            div = PATCH * 2**STAGES
            raise MedtuneInputError(
                f"backbone {cfg.name}: img_size {cfg.img_size} is not divisible by {div} (patch "
                f"{PATCH} x 4 patch mergings of Swin UNETR); use {max(div, cfg.img_size // div * div)} "
                f"or {cfg.img_size // div * div + div}"
            )
        # MONAI's constructor reads its drop-path rates with .item(), which a meta-device build
        # (`medtune params`) cannot do: the encoder is then built on the CPU (0.3 s, ~30 MB).
        on_meta = torch.empty(0).device.type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            model = SwinTransformer(
                in_chans=cfg.in_chans, patch_size=(PATCH,) * 3, spatial_dims=3, **kwargs
            )
        return cls(model, cfg.name, cfg.in_chans, cfg.img_size, normalize)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_norm(x) if self.normalize else x

    def forward_features(self, x: torch.Tensor, ctx: SliceContext) -> list[torch.Tensor]:
        """Volume `(B, C, D, H, W)` -> the six features of `feature_info` (module docstring)."""
        from monai.networks.nets.swin_unetr import compute_mask, get_window_size

        m = self.model
        h = m.pos_drop(m.patch_embed(x))  # (B, F, D/2, H/2, W/2)
        feats = [x, self._features(h)]
        idx = 0
        for layer in self.stages:
            grid = h.permute(0, 2, 3, 4, 1).contiguous()  # (B, D', h, w, C)
            size = tuple(grid.shape[1:4])
            window, shift = get_window_size(size, layer.window_size, layer.shift_size)
            padded = [-(-n // w) * w for n, w in zip(size, window)]
            mask = compute_mask(padded, window, shift, grid.device)
            for blk in layer.blocks:
                grid = self.run_checkpointed(
                    idx, self._step, idx, blk, grid, mask, ctx=ctx, block=blk
                )
                idx += 1
            h = layer.downsample(grid).permute(0, 4, 1, 2, 3)  # (B, 2C, D'/2, h/2, w/2)
            feats.append(self._features(h))
        return feats

    def _step(self, i: int, blk: nn.Module, grid: torch.Tensor, mask, ctx) -> torch.Tensor:
        """Block `i` (3D window attention under `mask`) and its module, on `(B, D', h, w, C)`."""
        return self.run_post_volume(i, blk(grid, mask), ctx)

    def transformer_blocks(self) -> list[nn.Module]:
        return [blk for layer in self.stages for blk in layer.blocks]

    def input_conv_name(self) -> str:
        return "patch_embed.proj"

    def stage_hidden_info(self) -> dict[str, int]:
        # As for 2D Swin, stage 0's inter-stage zero state has half the channels at twice the
        # resolution; here the depth halves too, so the alignment conv strides (2, 2, 2).
        return {"stage0_ratio": 2, "stage0_depth_ratio": 2}
