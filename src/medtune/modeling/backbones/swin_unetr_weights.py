"""Pre-trained Swin UNETR encoder weights from a local file, fitted to the `swin_unetr` backbone.

Layouts read (`backbone.pretrained: PATH`, `.pt` / `.pth` / `.ckpt` / `.safetensors`):

- MONAI's self-supervised encoder `model_swinvit.pt` (Tang et al., CVPR 2022): `{"state_dict":
  {"module.patch_embed.proj.weight", "module.layers1.0.blocks.0.mlp.fc1.weight", ...,
  "module.layers4.0.downsample.reduction.weight", ...}}`, the keys `SwinUNETR.load_from`
  reads; its older `swin_vit.` spelling;
- a whole MONAI `SwinUNETR` state dict (`swinViT.*` plus the decoder, which is not loaded and
  is reported).

The file is read by timm's `load_state_dict` (weights only, the DDP `module.` prefix removed);
MLP names `fc1` / `fc2` become MONAI's `linear1` / `linear2`; the `relative_position_index`
buffers are rebuilt by the model (skipped); relative-position tables of another window size
are resized (a smaller window keeps the central offsets exactly, a larger one is interpolated
trilinearly); the 2x2x2 patch-embedding conv is adapted to the input
channels with timm's `adapt_input_conv` (repeat and rescale 1 -> 4 channels). Then every
encoder tensor must be present with its shape (else the first mismatching names are given),
the state dict is loaded strictly, and everything adapted, resized, skipped or unused is
reported.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from timm.models import load_state_dict as timm_load_state_dict

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import Backbone

ENCODER_PREFIXES = ("swinViT.", "swin_vit.")
INDEX = "relative_position_index"
TABLE = "relative_position_bias_table"
SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def read_swin_unetr_file(source: str, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The raw state dict of a local checkpoint file (DDP prefix removed), and its description."""
    if source.startswith(("timm:", "package:")):
        raise MedtuneInputError(
            f"backbone {name}: weights '{source}' are not Swin UNETR weights; set backbone.pretrained "
            "to a local file such as MONAI's model_swinvit.pt"
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise MedtuneInputError(f"backbone weights file {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise MedtuneInputError(
            f"backbone weights file {path}: expected one of {', '.join(SUFFIXES)} (e.g. model_swinvit.pt)"
        )
    try:
        sd = timm_load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a checkpoint
        raise MedtuneInputError(
            f"backbone weights file {path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MedtuneInputError(
            f"backbone weights file {path}: expected a mapping of names to tensors"
        )
    return sd, f"file {path}"


def _encoder_part(sd: dict[str, torch.Tensor], report: list[str]) -> dict[str, torch.Tensor]:
    """Keys of the encoder, without a `swinViT.` / `swin_vit.` prefix (other keys are kept
    under their own names and end up reported as unused)."""
    prefix = next((p for p in ENCODER_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if prefix is None:
        return dict(sd)
    out = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    others = sum(not k.startswith(prefix) for k in sd)
    report.append(
        f"took the encoder tensors under '{prefix}'"
        + (f"; {others} other tensors (decoder, heads) are not loaded" if others else "")
    )
    return out


def _rename_mlp(sd: dict[str, torch.Tensor], report: list[str]) -> dict[str, torch.Tensor]:
    """`mlp.fc1` / `mlp.fc2` (the checkpoint's names) -> MONAI's `mlp.linear1` / `mlp.linear2`."""
    out, n = {}, 0
    for k, v in sd.items():
        new = re.sub(r"\.mlp\.fc([12])\.", r".mlp.linear\1.", k)
        n += new != k
        out[new] = v
    if n:
        report.append(f"renamed {n} MLP tensors mlp.fc1/fc2 -> mlp.linear1/linear2 (MONAI's names)")
    return out


def resize_rel_pos_table_3d(table: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """Table `((2w-1)^3, heads)` of a cubic window `w` -> `(prod(2w'-1), heads)` for `window`.

    Row `r` holds the bias of one relative offset `(dz, dy, dx)`, each in `-(w-1)..(w-1)`
    (MONAI's index order, z slowest). A smaller window keeps exactly the central offsets (a
    crop); a larger one interpolates the offset grid trilinearly.
    """
    n, heads = table.shape
    side = round(n ** (1 / 3))
    if side**3 != n:
        raise MedtuneInputError(
            f"relative-position table of {n} rows is not of a cubic window; cannot resize it"
        )
    grid = table.T.reshape(heads, side, side, side)
    size = [2 * w - 1 for w in window]
    if max(size) <= side:
        lo = [(side - k) // 2 for k in size]
        out = grid[:, lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]]
    else:
        out = F.interpolate(grid[None].float(), size=size, mode="trilinear", align_corners=True)[0]
    return out.reshape(heads, -1).T.contiguous().to(table.dtype)


def _fit(sd: dict[str, torch.Tensor], backbone: Backbone, report: list[str]) -> dict:
    """Drop the index buffers, resize tables, adapt the input conv (see module docstring)."""
    target = backbone.model.state_dict()
    index = [k for k in sd if k.endswith(INDEX)]
    for k in index:
        sd.pop(k)
    if index:
        report.append(f"skipped {len(index)} {INDEX} buffers (the model rebuilds them)")
    blocks = dict(backbone.model.named_modules())
    resized: dict[tuple, list[str]] = {}
    for k in [k for k in sd if k.endswith(TABLE) and k in target]:
        if sd[k].shape != target[k].shape and sd[k].shape[1] == target[k].shape[1]:
            window = tuple(blocks[k[: -len(TABLE) - 1]].window_size)
            old = round(sd[k].shape[0] ** (1 / 3))
            sd[k] = resize_rel_pos_table_3d(sd[k], window)
            resized.setdefault((old, window), []).append(k)
    for (old, window), keys in resized.items():
        how = "central crop" if 2 * max(window) - 1 <= old else "trilinear"
        report.append(
            f"resized {len(keys)} {TABLE} tensors from window {old // 2 + 1}^3 to "
            f"{'x'.join(map(str, window))} ({how}): {keys[0]}, ..."
        )
    conv = f"{backbone.input_conv_name()}.weight"
    w = sd.get(conv)
    if w is not None and w.ndim == 5 and w.shape[1] != backbone.in_chans:
        o, i, *kernel = w.shape
        try:  # timm adapts dim 1 only, so the 3D kernel travels flattened to 2D
            flat = adapt_input_conv(backbone.in_chans, w.reshape(o, i, kernel[0], -1), base_chans=i)
        except TypeError as exc:
            raise MedtuneInputError(
                f"adapting {conv} from {i} to {backbone.in_chans} channels needs a timm whose "
                f"adapt_input_conv takes base_chans (found timm {timm.__version__}); upgrade timm"
            ) from exc
        sd[conv] = flat.reshape(o, backbone.in_chans, *kernel)
        report.append(
            f"adapted input conv {conv} from {i} to {backbone.in_chans} channels (timm adapt_input_conv)"
        )
    return sd


def load_swin_unetr_weights(backbone: Backbone, cfg) -> list[str]:
    """Load `cfg.pretrained` (a local file) into a `swin_unetr` backbone; returns the report."""
    from medtune.modeling.backbones.weights import _report_unused

    if cfg.pretrained is True:
        raise MedtuneInputError(
            f"backbone {cfg.name} has no default weights that load offline; set backbone.pretrained "
            "to a local file (MONAI's self-supervised model_swinvit.pt, or a SwinUNETR state dict)"
        )
    sd, where = read_swin_unetr_file(str(cfg.pretrained), cfg.name)
    report = [f"source: {where}"]
    sd = _fit(_rename_mlp(_encoder_part(sd, report), report), backbone, report)
    target = backbone.model.state_dict()
    rebuilt = {k for k in target if k.endswith(INDEX)}
    mismatched = [
        f"{k} {tuple(sd[k].shape)} (model {tuple(target[k].shape)})"
        for k in sd
        if k in target and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if mismatched:
        raise MedtuneInputError(
            f"{where}: {len(mismatched)} tensor(s) do not fit {cfg.name}: "
            + "; ".join(mismatched[:5])
        )
    missing = [k for k in target if k not in sd and k not in rebuilt]
    if missing:
        raise MedtuneInputError(
            f"{where}: {len(missing)} tensor(s) of {cfg.name} are missing from the checkpoint "
            f"(not a Swin UNETR encoder of this architecture?): {', '.join(missing[:6])}"
        )
    used = {k: v for k, v in sd.items() if k in target}
    backbone.model.load_state_dict({**used, **{k: target[k] for k in rebuilt}}, strict=True)
    report += _report_unused({k: v for k, v in sd.items() if k not in target}, backbone.model)
    report.append(f"loaded {len(used)} tensors into {cfg.name}")
    return report
