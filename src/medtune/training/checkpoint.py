"""Atomic writes of the run directory: trainer state and adapter-only folders.

- `AtomicCheckpointIO` writes Lightning checkpoints to a temporary name in the same folder,
  flushes them to disk and renames them over the target (`os.replace`), so `last.ckpt` is
  always a complete checkpoint: a run killed while writing leaves the previous one intact (and
  a `.tmp-*` file that the next start removes).
- `RunCheckpointer` writes `trainer_state/last.ckpt` every `checkpoint_every_n_steps`
  optimiser steps, at the end of every epoch (after its validation) and, through
  `medtune.training.interrupt.StopOnSignal`, at the step where SIGTERM / SIGINT stops the run;
  `adapter_last/` at the end of every epoch, and `adapter/` whenever validation finds a new
  best mean Dice. A failed write (e.g. a full disk) removes its temporary file or folder.
- `write_adapter` writes an adapter folder under a temporary name and swaps it in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from medtune.artifacts.run_dir import ADAPTER_DIR, ADAPTER_LAST_DIR, RunDir
from medtune.modeling.model import SegModel


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are a temporary file plus a rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # e.g. a full disk: the previous checkpoint stays
            raise
        self.before_rename(tmp, path)
        os.replace(tmp, path)

    def before_rename(self, tmp: Path, path: Path) -> None:
        """Test hook, called once the temporary file is complete and before the rename
        (the resume tests replace it to SIGKILL the process at that point). Does nothing."""


def clean_temporary(folder: Path) -> None:
    """Remove `.tmp-*` files and folders (and `*.tmp` files) left in `folder` by a killed run."""
    if not folder.is_dir():
        return
    for p in [*folder.glob(".tmp-*"), *folder.glob("*.tmp")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def clean_run_temporary(run: RunDir) -> None:
    """`clean_temporary` in every folder of a run directory that medtune writes into."""
    for folder in (run.path, run.state_dir, run.adapter, run.adapter_last, run.logs):
        clean_temporary(folder)


def write_adapter(
    model: SegModel,
    out: Path,
    model_config: dict[str, Any],
    extra: dict[str, Any],
    backbone_sha256: str | None = None,
) -> Path:
    """Save the adapter-only folder `out` via a temporary folder swapped in by renames."""
    from medtune.artifacts.adapters import save_adapter

    out = Path(out)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    old = out.with_name(f".tmp-old-{os.getpid()}-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_adapter(
            model, tmp, model_config=model_config, extra=extra, backbone_sha256=backbone_sha256
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: the previous folder stays
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


class RunCheckpointer(Checkpoint):
    """Writes the run directory's checkpoints (see the module docstring).

    A `Checkpoint` subclass, so Lightning calls its epoch-end hook after the module's (whose
    epoch summary the checkpoint must hold).

    Args:
        run_dir: the run directory.
        every_n_steps: also write the trainer state every N optimiser steps (None: epochs only).
        adapter_extra: callable returning the `extra` dict of adapter folders for a module.
        model_config: the model section of the resolved config (for `adapter_config.json`).
    """

    def __init__(
        self,
        run_dir: Path,
        every_n_steps: int | None,
        model_config: dict[str, Any],
        adapter_extra,
    ):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self.model_config = model_config
        self.adapter_extra = adapter_extra
        self._last_step_saved = -1
        self._backbone_sha256: str | None = None

    def backbone_sha256(self, model: SegModel) -> str:
        """The frozen backbone's hash, computed at the first adapter save of the run only."""
        if self._backbone_sha256 is None:
            from medtune.artifacts.adapters import backbone_hash

            self._backbone_sha256 = backbone_hash(model)
        return self._backbone_sha256

    @property
    def last_ckpt(self) -> Path:
        return RunDir(self.run_dir).last_ckpt

    def save_state(self, trainer: pl.Trainer) -> None:
        """Write `trainer_state/last.ckpt` (every process must call it; rank 0 writes)."""
        trainer.save_checkpoint(self.last_ckpt, weights_only=False)
        self._last_step_saved = trainer.global_step

    def save_adapter(self, module: pl.LightningModule, name: str, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            write_adapter(
                module.model,
                self.run_dir / name,
                self.model_config,
                self.adapter_extra(module),
                self.backbone_sha256(module.model),
            )

    def save_mid_epoch(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        """Write the trainer state after batch `batch_idx` (from `on_train_batch_end`) where
        that is a resumable step boundary; returns whether it was written."""
        if trainer.global_step == self._last_step_saved:
            return False
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return False  # mid-accumulation: gradients are not part of the checkpoint
        if batch_idx + 1 >= trainer.num_training_batches:
            return False  # the end-of-epoch checkpoint follows
        self.save_state(trainer)
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_steps
        if n and not trainer.global_step % n:
            self.save_mid_epoch(trainer, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save_adapter(pl_module, ADAPTER_LAST_DIR, trainer)
        self.save_state(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not getattr(pl_module, "new_best", False):
            return
        pl_module.new_best = False
        self.save_adapter(pl_module, ADAPTER_DIR, trainer)
