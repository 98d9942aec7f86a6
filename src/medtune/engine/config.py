"""Training section of an experiment config (the paper's recipe as defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.errors import MedtuneInputError


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
    warmup_epochs: int = 25
    """Linear warm-up epochs before cosine decay."""
    loss: str = "dice"
    """`dice` (soft Dice on the softmax, summed over foreground classes) or `dice_ce`."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation steps."""
    precision: str = "auto"
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
    """Validate every N epochs (sliding-window Dice on the validation fold)."""
    sw_overlap: float = 0.6666666666666666
    """Sliding-window overlap for validation and evaluation (paper: stride 1/3 window)."""
    sw_batch_size: int = 1
    """Windows per forward pass in sliding-window inference."""
    steps_per_epoch: int | None = None
    """Optimiser steps per epoch; None: one pass over data.samples_per_epoch crops."""

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise MedtuneInputError(f"train.max_epochs: expected >= 1, found {self.max_epochs}")
        if self.lr <= 0:
            raise MedtuneInputError(f"train.lr: expected > 0, found {self.lr}")
        if self.loss not in ("dice", "dice_ce"):
            raise MedtuneInputError(f"train.loss: expected dice or dice_ce, found '{self.loss}'")
        if not 0 <= self.sw_overlap < 1:
            raise MedtuneInputError(
                f"train.sw_overlap: expected in [0, 1), found {self.sw_overlap}"
            )
        if self.warmup_epochs < 0:
            raise MedtuneInputError(
                f"train.warmup_epochs: expected >= 0, found {self.warmup_epochs}"
            )
