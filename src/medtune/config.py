"""Experiment config: model + data + train sections, loaded from YAML with dotted overrides.

    cfg = load_config("configs/brats/vit_b16_upernet/med_adapter.yaml", {"train.max_epochs": 5})

The resolved config (every default filled in) is what runs write into their run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.configbase import apply_overrides, from_dict, load_yaml, parse_override_value, to_dict
from medtune.data.config import DataConfig
from medtune.engine.config import TrainConfig
from medtune.errors import MedtuneInputError
from medtune.model import ModelConfig


@dataclass
class ExperimentConfig:
    """Everything a run needs: what model, what data, how to train."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone, decoder, tuning method, classes."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset, cache, folds, crops and augmentation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, devices and checkpoints."""
    name: str = ""
    """Free-form name of the recipe."""

    def __post_init__(self) -> None:
        method = self.model.method
        if "train_depth" in method and method["train_depth"] is None:
            method["train_depth"] = self.data.crop_size[0]
        if (
            self.data.crop_size[1] != self.model.backbone.img_size
            or self.data.crop_size[2] != self.model.backbone.img_size
        ):
            raise MedtuneInputError(
                f"data.crop_size {self.data.crop_size}: H and W must equal model.backbone.img_size "
                f"({self.model.backbone.img_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def parse_cli_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--train.max_epochs", "5", "--data.fold=1"]` -> `{"train.max_epochs": 5, "data.fold": 1}`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=")[0]:
            raise MedtuneInputError(
                f"unrecognised argument '{tok}'; config overrides look like --train.max_epochs 5"
            )
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise MedtuneInputError(f"override {tok} has no value")
            value = tokens[i + 1]
            i += 2
        out[key] = parse_override_value(value)
    return out


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an experiment config from a nested dict."""
    return from_dict(ExperimentConfig, data, "")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML recipe, apply dotted overrides, validate; errors name the file."""
    data = load_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return config_from_dict(data)
    except MedtuneInputError as exc:
        raise MedtuneInputError(f"{path}: {exc}") from exc
