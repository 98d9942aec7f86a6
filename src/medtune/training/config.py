"""Training section and the whole experiment config (model + data + train), read from YAML.

    cfg = load_config("configs/brats/vit_b16_upernet/med_adapter.yaml", {"train.max_epochs": 5})

The resolved config (every default filled in) is what runs write into their run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtune.core.configbase import apply_overrides, from_dict, load_yaml, to_dict
from medtune.core.errors import MedtuneInputError
from medtune.data.config import DataConfig
from medtune.inference.sliding_window import DEFAULT_OVERLAP
from medtune.modeling.model import ModelConfig

Precision = Literal[
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
]
"""`auto` and Lightning's precision names."""


def check_compile_backend(name: str) -> None:
    """Raise a one-line error when `name` is not a `torch.compile` backend of this install."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise MedtuneInputError(
            f"train.compile_backend: expected one of {', '.join(sorted(known))}, found {name!r}"
        )


@dataclass
class TrainConfig:
    """Optimisation, schedule, devices and checkpointing."""

    max_epochs: int = 250
    """Training epochs (paper: 250 BraTS, 500 KiTS)."""
    lr: float = 2e-3
    """Peak learning rate (paper: 2e-3; KiTS ViT 4e-3)."""
    weight_decay: float = 1e-5
    """Adam weight decay."""
    amsgrad: bool = True
    """Use the AMSGrad variant of Adam (as the paper)."""
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """PyTorch's implementation of the Adam update (same mathematics, different rounding):
    `auto` is `fused` (one kernel, CPU and CUDA) when every trainable parameter allows it, else
    PyTorch's default; `foreach`, `for-loop` (the per-parameter loop) force the others."""
    warmup_epochs: int = 25
    """Linear warm-up epochs before cosine decay."""
    loss: Literal["dice", "dice_ce"] = "dice"
    """`dice` (soft Dice on the softmax, summed over foreground classes) or `dice_ce`."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation steps."""
    precision: Precision = "auto"
    """Lightning precision; `auto`: bf16-mixed on CUDA, 32-true on CPU."""
    accelerator: str = "auto"
    """Lightning accelerator (cpu, gpu, auto)."""
    devices: int | str = "auto"
    """Devices per node."""
    num_nodes: int = 1
    """Nodes for multi-node DDP."""
    strategy: str = "auto"
    """Lightning strategy (auto, ddp, ddp_spawn, ...)."""
    sync_batchnorm: bool = True
    """Synchronise trainable BatchNorm statistics across processes under DDP on CUDA."""
    seed: int = 0
    """Global seed (model init, crops, augmentation)."""
    deterministic: bool = False
    """Deterministic algorithms (slower; used by the resume tests)."""
    val_every: int = 10
    """Validate every N epochs and after the last one (sliding-window Dice; 0: only at the end)."""
    sw_overlap: float = DEFAULT_OVERLAP
    """Sliding-window overlap for validation and evaluation (paper: stride 1/3 window)."""
    sw_batch_size: int = 1
    """Windows per forward pass in sliding-window inference."""
    steps_per_epoch: int | None = None
    """Optimiser steps per epoch; None: one pass over data.samples_per_epoch crops."""
    checkpoint_every_n_steps: int | None = None
    """Also write the resumable trainer state every N optimiser steps (None: end of epoch only)."""
    log_every_n_steps: int = 10
    """Logging interval of the training loss, in steps."""
    val_max_cases: int | None = None
    """Validate on at most this many cases of the validation fold (None: all)."""
    progress_bar: bool = True
    """Show Lightning's progress bar on stderr (refreshed every `log_every_n_steps` steps)."""
    compile: bool = False
    """Compile the model's forward with `torch.compile` (first steps slower, later ones faster)."""
    compile_backend: str = "inductor"
    """`torch.compile` backend when `compile` is on (`inductor`; `aot_eager`, `eager`: debugging)."""
    fold_frozen_batchnorm: bool = True
    """Fold each frozen BatchNorm (eval mode) into the conv before it while training: the same
    outputs, and a CNN backbone's backward pass through its frozen stages costs less
    (`medtune.modeling.frozen_bn`; state dicts and checkpoints unchanged)."""
    channels_last: bool | None = None
    """Frozen 2D convs' weights in channels-last memory format while training (oneDNN's fast
    layout; same values and state dict, `medtune.modeling.layout`); None: on the CPU only."""
    activation_checkpointing: bool = False
    """Recompute each frozen backbone block (with its inserted modules) in the backward pass
    instead of keeping its activations: less GPU memory (11-24 GB cards), about a third slower."""

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise MedtuneInputError(f"train.max_epochs: expected >= 1, found {self.max_epochs}")
        if self.lr <= 0:
            raise MedtuneInputError(f"train.lr: expected > 0, found {self.lr}")
        if not 0 <= self.sw_overlap < 1:
            raise MedtuneInputError(
                f"train.sw_overlap: expected in [0, 1), found {self.sw_overlap}"
            )
        for name in ("steps_per_epoch", "checkpoint_every_n_steps", "val_max_cases"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise MedtuneInputError(f"train.{name}: expected None or an int >= 1, found {v!r}")
        if self.accumulate_grad_batches < 1:
            raise MedtuneInputError(
                f"train.accumulate_grad_batches: expected >= 1, found {self.accumulate_grad_batches}"
            )
        if self.val_every < 0:
            raise MedtuneInputError(
                f"train.val_every: expected >= 0 (0: validate only at the end), found {self.val_every}"
            )
        if self.log_every_n_steps < 1:
            raise MedtuneInputError(
                f"train.log_every_n_steps: expected >= 1, found {self.log_every_n_steps}"
            )
        if self.num_nodes < 1:
            raise MedtuneInputError(f"train.num_nodes: expected >= 1, found {self.num_nodes}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend.strip():
            raise MedtuneInputError(
                f"train.compile_backend: expected a torch.compile backend name (e.g. inductor), "
                f"found {self.compile_backend!r}"
            )
        if self.compile:
            check_compile_backend(self.compile_backend)
        if self.warmup_epochs < 0:
            raise MedtuneInputError(
                f"train.warmup_epochs: expected >= 0, found {self.warmup_epochs}"
            )


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
