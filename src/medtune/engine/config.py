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
    """Validate every N epochs and after the last one (sliding-window Dice; 0: only at the end)."""
    sw_overlap: float = 0.6666666666666666
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
    """Show Lightning's progress bar on stderr."""

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
        if self.warmup_epochs < 0:
            raise MedtuneInputError(
                f"train.warmup_epochs: expected >= 0, found {self.warmup_epochs}"
            )
