"""Adapter-only files: save what a tuning method trained, load it onto the same frozen backbone.

An adapter folder holds two files (the peft layout):

- `adapter_config.json`: format version, medtune version, the method (name + config), the model
  config (backbone preset, in_chans, img_size, decoder, num_classes), `backbone_sha256` (see
  `backbone_hash`), parameter counts, the SHA-256 of the tensor file, and free `extra` data
  (e.g. label conventions).
- `adapter_model.safetensors`: exactly the tensors the method trained (inserted modules, decoder,
  the encoder extras the paper tunes) plus the buffers of inserted modules and of the decoder
  (e.g. BatchNorm running statistics). No pickle. For `full` and `scratch` every tensor is
  tuned, so the "adapter" is the whole model (`whole_model: true` in the config).

Both files are written under temporary names and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtune.core.atomic import atomic_write
from medtune.core.errors import BackboneMismatchError, MedtuneInputError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "medtune-adapter"
FORMAT_VERSION = 1


def canonical_name(name: str, wrapper_segments: tuple[str, ...]) -> str:
    """State-dict name without the segments the method's wrappers insert (its
    `wrapper_segments`, e.g. peft's `qkv.base_layer.weight`, medtune's `attn.wrapped.qkv`):
    the name the tensor had before the method was inserted."""
    return ".".join(s for s in name.split(".") if s not in wrapper_segments)


def adapter_tensor_names(model: nn.Module) -> list[str]:
    """State-dict keys an adapter file holds, in state-dict order.

    Parameters that are tuned or inserted; buffers of the decoder, of the modules in the
    backbone's `pre_block`/`post_block` hooks, and of any module owning such a parameter directly.
    """
    inserted = set(model.inserted_names)
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | inserted
    owners = {n.rpartition(".")[0] for n in keep}
    param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out = []
    for key in model.state_dict(keep_vars=True):
        if key in param_names:
            if key in keep:
                out.append(key)
            continue
        owner = key.rpartition(".")[0]
        if (
            key.startswith(("decoder.", "backbone.pre_block.", "backbone.post_block."))
            or owner in owners
        ):
            out.append(key)
    return out


def frozen_backbone_keys(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, str]:
    """State-dict key -> canonical name of every backbone entry the adapter does not hold.

    `state`: `model.state_dict(keep_vars=True)` when the caller already has it.
    """
    held = set(adapter_tensor_names(model))
    if state is None:
        state = model.state_dict(keep_vars=True)
    segments = model.method.wrapper_segments if model.method is not None else ()
    return {
        k: canonical_name(k, segments) for k in state if k.startswith("backbone.") and k not in held
    }


def frozen_backbone_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor for every backbone state-dict entry the adapter does not hold."""
    state = model.state_dict(keep_vars=True)
    return {canon: state[key] for key, canon in frozen_backbone_keys(model, state).items()}


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def backbone_hash(model: nn.Module, frozen: dict[str, torch.Tensor] | None = None) -> str:
    """SHA-256 over the frozen backbone tensors: canonical names (sorted), dtypes, shapes, bytes.

    Identical for every parameter-efficient method on the same pre-trained weights (wrappers do
    not change canonical names); for `full`/`scratch` nothing is frozen and the hash is that of
    the empty set. `frozen`: `frozen_backbone_tensors(model)` when the caller already has it.
    """
    if frozen is None:
        frozen = frozen_backbone_tensors(model)
    h = hashlib.sha256()
    for name, t in sorted(frozen.items()):
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_config_dict(model_config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(model_config) and not isinstance(model_config, type):
        from medtune.core.configbase import to_dict

        return to_dict(model_config)
    if not isinstance(model_config, dict):
        raise MedtuneInputError(
            f"save_adapter: model_config must be the model config (dict or ModelConfig), found {type(model_config).__name__}"
        )
    return json.loads(json.dumps(model_config))


def _checked_model_config(model: nn.Module, model_config: dict[str, Any]) -> dict[str, Any]:
    """The model config to store, its method section taken from the tuned model; refuses a
    model without a method, a merged one, or a config that names another method."""
    method = model.method
    if method is None:
        raise MedtuneInputError("save_adapter: the model has no tuning method applied")
    if model.merged:
        raise MedtuneInputError(
            f"save_adapter: the {method.name} weights were merged into the backbone; "
            "save the adapter before merging (merging is for deployment)"
        )
    cfg = _model_config_dict(model_config)
    cfg_method = (cfg.get("method") or {}).get("name")
    if cfg_method is not None and cfg_method != method.name:
        raise MedtuneInputError(
            f"save_adapter: model_config names method '{cfg_method}' but the model was tuned with '{method.name}'"
        )
    cfg["method"] = method.to_dict()
    return cfg


def _adapter_tensors(model: nn.Module, half: bool) -> dict[str, torch.Tensor]:
    """CPU copies of the tensors an adapter file holds (floating ones as float16 if `half`)."""
    state = model.state_dict()
    tensors = {}
    for key in adapter_tensor_names(model):
        t = state[key].detach().to("cpu")
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[key] = t.contiguous().clone()
    return tensors


def save_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike,
    model_config: dict[str, Any],
    half: bool = False,
    extra: dict[str, Any] | None = None,
    backbone_sha256: str | None = None,
) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` for a tuned `SegModel` into
    `out_dir` (created); returns the folder. `half`: store floating tensors as float16.
    `backbone_sha256`: `backbone_hash(model)` when the caller already knows it (training saves
    an adapter every epoch; the frozen backbone, and so its hash, never changes in a run)."""
    from safetensors.torch import save_file

    from medtune import __version__
    from medtune.modeling.params import count_parameters

    method = model.method
    cfg = _checked_model_config(model, model_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tensors = _adapter_tensors(model, half)
    meta = {"format": FORMAT, "method": method.name}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=meta))

    counts = count_parameters(model)
    frozen = frozen_backbone_tensors(model)
    backbone = model.backbone
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medtune_version": __version__,
        "method": method.to_dict(),
        "model": cfg,
        "backbone": {
            "name": backbone.name,
            "timm_name": backbone.timm_name,
            "family": backbone.family,
            "in_chans": backbone.in_chans,
            "img_size": backbone.img_size,
        },
        "backbone_sha256": backbone_sha256 or backbone_hash(model, frozen),
        "whole_model": not frozen,
        "num_classes": model.num_classes,
        "parameters": counts.as_dict(),
        "weights": {
            "file": WEIGHTS_NAME,
            "sha256": _file_sha256(out / WEIGHTS_NAME),
            "tensors": len(tensors),
            "dtype": "float16" if half else "as trained",
        },
        "extra": extra or {},
    }
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(out / CONFIG_NAME, lambda p: p.write_text(text))
    return out


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed `adapter_config.json` of a folder; a missing or malformed file raises."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise MedtuneInputError(
            f"{path}: no adapter config here; expected a folder written by save_adapter"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedtuneInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise MedtuneInputError(f"{path}: not a medtune adapter config (format != '{FORMAT}')")
    if config.get("format_version") != FORMAT_VERSION:
        raise MedtuneInputError(
            f"{path}: adapter format version {config.get('format_version')}, this medtune reads {FORMAT_VERSION}"
        )
    for key in ("method", "model", "backbone_sha256", "weights"):
        if key not in config:
            raise MedtuneInputError(f"{path}: missing field '{key}'")
    return config


def read_adapter_tensors(adapter_dir: str | os.PathLike, config: dict[str, Any]) -> dict:
    """The tensors of `adapter_model.safetensors`, after checking the file's SHA-256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise MedtuneInputError(f"{path}: adapter weights file is missing")
    expected = config["weights"].get("sha256")
    found = _file_sha256(path)
    if expected != found:
        raise MedtuneInputError(
            f"{path}: SHA-256 {found} does not match {expected} recorded in {CONFIG_NAME}; "
            "the file was changed or is corrupt"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedtuneInputError(f"{path}: cannot read safetensors ({exc})") from exc


def _short(names) -> str:
    names = sorted(names)
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def load_adapter_state(model: nn.Module, tensors: dict, where: str) -> None:
    """Copy adapter `tensors` into `model`; missing, unexpected or misshapen tensors raise."""
    expected = adapter_tensor_names(model)
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_short(unexpected)}")
        raise MedtuneInputError(f"{where}: does not fit the model; " + "; ".join(parts))
    state = model.state_dict(keep_vars=True)
    for key in expected:
        if tuple(tensors[key].shape) != tuple(state[key].shape):
            raise MedtuneInputError(
                f"{where}: tensor {key} has shape {tuple(tensors[key].shape)}, the model expects {tuple(state[key].shape)}"
            )
    with torch.no_grad():
        for key in expected:
            dst = state[key]
            dst.copy_(tensors[key].to(device=dst.device, dtype=dst.dtype))


def check_backbone(
    config: dict[str, Any], found: str, adapter_dir: str | os.PathLike, allow: bool
) -> None:
    """Refuse a backbone whose hash differs from the adapter's, unless `allow`."""
    expected = config["backbone_sha256"]
    if expected != found and not allow:
        raise BackboneMismatchError(
            f"{Path(adapter_dir) / CONFIG_NAME}: backbone weights differ from those the adapter was "
            f"trained on (expected sha256 {expected}, found {found}); load the same pre-trained "
            "backbone, or pass allow_backbone_mismatch=True to load anyway"
        )


def build_from_config(config: dict[str, Any], load_backbone_weights: bool) -> nn.Module:
    """A `SegModel` built (method applied) from an adapter config's model section."""
    from medtune.core.configbase import from_dict
    from medtune.modeling.model import ModelConfig, build_model

    cfg = from_dict(ModelConfig, config["model"], "adapter_config.json model")
    return build_model(cfg, load_weights=load_backbone_weights)


def load_adapter(
    adapter_dir: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    allow_backbone_mismatch: bool = False,
    load_backbone_weights: bool = True,
) -> nn.Module:
    """Load an adapter folder onto `model` (or onto a model built from its saved config).

    When `model` is None the model is built from the saved model config, loading the
    backbone's pre-trained weights as that config says when `load_backbone_weights` (without
    them the backbone is random and the hash check fails unless `allow_backbone_mismatch`).
    A given `model` must already carry the same method and config. The frozen backbone must
    hash to the saved `backbone_sha256`; the tensor file must match its recorded SHA-256 and
    hold exactly the tensors the method trains. Returns the model.
    """
    config = read_adapter_config(adapter_dir)
    tensors = read_adapter_tensors(adapter_dir, config)
    cfg_path = Path(adapter_dir) / CONFIG_NAME
    if model is None:
        model = build_from_config(config, load_backbone_weights)
    else:
        found = model.method.to_dict() if model.method is not None else None
        if found != config["method"]:
            raise MedtuneInputError(
                f"{cfg_path}: the adapter was trained with method {config['method']}, "
                f"the given model carries {found}"
            )
    check_backbone(config, backbone_hash(model), adapter_dir, allow_backbone_mismatch)
    load_adapter_state(model, tensors, str(Path(adapter_dir) / WEIGHTS_NAME))
    return model
