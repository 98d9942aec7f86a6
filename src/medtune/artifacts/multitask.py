"""Several tasks, one frozen backbone: adapter folders loaded side by side, switched by name.

    bank = MultiTaskModel.from_adapters({"brats": "runs/brats/adapter", "kits": "runs/kits/adapter"})
    bank.switch("kits"); logits = bank(volume)       # or bank(volume, task="brats")

Every task is a `SegModel` with its own inserted modules and decoder, but the frozen backbone
tensors (every backbone parameter and buffer its adapter does not hold) are the *same* tensor
objects in all of them: the backbone is loaded once, held in memory once, and a task added
later is tied to it instead of loading weights again. Each adapter's `backbone_sha256` must
match the shared backbone's. Methods that train the backbone (`full`, `scratch`) have nothing
frozen to share and are refused; merged LoRA would change the shared weights, so
`MultiTaskModel` never merges.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medtune.artifacts.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    backbone_hash,
    build_from_config,
    check_backbone,
    frozen_backbone_keys,
    frozen_backbone_tensors,
    load_adapter,
    load_adapter_state,
    read_adapter_config,
    read_adapter_tensors,
)
from medtune.core.errors import MedtuneInputError


def tie_backbone(model: nn.Module, shared: Mapping[str, torch.Tensor], where: str) -> None:
    """Make `model`'s frozen backbone tensors the `shared` ones (canonical name -> tensor).

    The frozen tensors of `model` must be exactly the shared names with the same shapes and
    dtypes; anything else means another backbone architecture and raises naming `where`.
    """
    state = model.state_dict(keep_vars=True)
    frozen = frozen_backbone_keys(model, state)
    names = set(frozen.values())
    if names != set(shared):
        extra, missing = sorted(names - set(shared)), sorted(set(shared) - names)
        raise MedtuneInputError(
            f"{where}: its backbone does not have the shared backbone's frozen tensors "
            f"(only in this adapter's model: {extra[:3]}, only in the shared one: {missing[:3]}); "
            "tasks must use the same backbone preset, in_chans and img_size"
        )
    for key, canon in frozen.items():
        src, dst = shared[canon], state[key]
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise MedtuneInputError(
                f"{where}: backbone tensor {canon} is {tuple(dst.shape)} {dst.dtype}, the shared "
                f"backbone's is {tuple(src.shape)} {src.dtype}"
            )
        owner_path, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_path)
        if attr in owner._parameters:
            owner._parameters[attr] = src
        else:
            owner._buffers[attr] = src


class MultiTaskModel(nn.Module):
    """Task name -> `SegModel`, all on one frozen backbone; `forward(x, task=None)` runs the
    active task (set by `switch`) or the named one: `(B, C, D, H, W)` -> `(B, K_task, D, H, W)`."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict()
        self.active: str | None = None
        self.backbone_sha256: str | None = None
        self._shared_tensors: dict[str, torch.Tensor] | None = None  # canonical name -> tensor

    # --- building -------------------------------------------------------------------------
    @classmethod
    def from_adapters(
        cls,
        adapters: Mapping[str, str | os.PathLike],
        *,
        base: nn.Module | None = None,
        load_backbone_weights: bool = True,
        allow_backbone_mismatch: bool = False,
    ) -> MultiTaskModel:
        """Load every adapter folder of `adapters` (task name -> folder) onto one backbone.

        The backbone comes from `base` (a `SegModel` whose frozen backbone tensors are shared,
        e.g. one already in memory) or else from the first adapter's saved model config
        (pre-trained weights loaded once when `load_backbone_weights`). The first task is active.
        """
        if not adapters:
            raise MedtuneInputError("MultiTaskModel.from_adapters: no adapter folders given")
        bank = cls()
        items = list(adapters.items())
        if base is None:
            name, path = items.pop(0)
            config = bank._check_shareable(path)
            model = load_adapter(
                path,
                allow_backbone_mismatch=allow_backbone_mismatch,
                load_backbone_weights=load_backbone_weights,
            )
            bank.backbone_sha256 = config["backbone_sha256"]
            bank._shared_tensors = frozen_backbone_tensors(model)
            bank._add(name, model)
        else:
            bank._shared_tensors = frozen_backbone_tensors(base)
            bank.backbone_sha256 = backbone_hash(base, bank._shared_tensors)
        for name, path in items:
            bank.add_task(name, path, allow_backbone_mismatch=allow_backbone_mismatch)
        return bank

    def _check_shareable(self, adapter_dir: str | os.PathLike) -> dict:
        config = read_adapter_config(adapter_dir)
        if config.get("whole_model"):
            raise MedtuneInputError(
                f"{Path(adapter_dir) / CONFIG_NAME}: method '{config['method'].get('name')}' trains the "
                "backbone, so this adapter is a whole model with no frozen backbone to share; "
                "load it alone with load_adapter"
            )
        return config

    def _add(self, name: str, model: nn.Module) -> None:
        model.eval()
        self.tasks[name] = model
        if self.active is None:
            self.active = name

    def add_task(
        self, name: str, adapter_dir: str | os.PathLike, *, allow_backbone_mismatch: bool = False
    ) -> None:
        """Load one more adapter folder as task `name`, tied to the shared backbone (its
        pre-trained weights are not read again)."""
        if name in self.tasks:
            raise MedtuneInputError(f"MultiTaskModel: task '{name}' is already loaded")
        if self.backbone_sha256 is None:
            raise MedtuneInputError("MultiTaskModel: no shared backbone yet; use from_adapters")
        config = self._check_shareable(adapter_dir)
        check_backbone(config, self.backbone_sha256, adapter_dir, allow_backbone_mismatch)
        tensors = read_adapter_tensors(adapter_dir, config)
        model = build_from_config(config, load_backbone_weights=False)
        tie_backbone(model, self._shared_tensors, str(Path(adapter_dir) / CONFIG_NAME))
        load_adapter_state(model, tensors, str(Path(adapter_dir) / WEIGHTS_NAME))
        self._add(name, model)

    # --- use ------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        """Loaded task names, in loading order."""
        return list(self.tasks.keys())

    def _get(self, name: str) -> nn.Module:
        if name not in self.tasks:
            raise MedtuneInputError(
                f"unknown task '{name}'; loaded: {', '.join(self.task_names) or '(none)'}"
            )
        return self.tasks[name]

    def switch(self, name: str) -> MultiTaskModel:
        """Make `name` the task `forward` runs by default; returns self."""
        self._get(name)
        self.active = name
        return self

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        name = task if task is not None else self.active
        if name is None:
            raise MedtuneInputError("MultiTaskModel: no task loaded")
        return self._get(name)(x)
