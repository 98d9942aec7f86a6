"""Stopping a run on SIGTERM or SIGINT with a resumable checkpoint and a way back.

Lightning handles SIGTERM (what SLURM pre-emption, `timeout` and `kill` send) itself: its handler
sets `trainer.received_sigterm`, the loops raise `SIGTERMException` at the next step boundary
(under DDP on every process at once), and on SLURM its environment also requeues the job on
SIGUSR1. `StopOnSignal` builds on that instead of adding a second SIGTERM handler:

- in one process outside SLURM it forwards SIGINT (Ctrl-C) to Lightning's SIGTERM handler, so
  Ctrl-C also stops at the next step boundary (a second Ctrl-C stops at once, without a new
  checkpoint); under DDP or SLURM, SIGINT is Lightning's KeyboardInterrupt path;
- when the stop is seen after a step, in one process, it writes `trainer_state/last.ckpt` right
  there (`RunCheckpointer.save_mid_epoch`: not inside gradient accumulation; after an epoch's
  last step the epoch-end checkpoint is written before Lightning stops); under DDP the resume
  point is the last regular checkpoint (`train.checkpoint_every_n_steps`, epoch ends);
- it records which signal stopped the run, and `stopped(...)` turns that into
  `TrainingInterrupted` (the CLI prints its one line and exits 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medtune.core.errors import TrainingInterrupted
from medtune.training.checkpoint import RunCheckpointer


class StopOnSignal(pl.Callback):
    """Records SIGTERM / SIGINT, forwards SIGINT to Lightning's SIGTERM path in one process,
    and checkpoints at the step boundary where the stop is seen (see the module docstring)."""

    def __init__(self, checkpointer: RunCheckpointer):
        self.checkpointer = checkpointer
        self.signum: int | None = None
        """The signal that stopped training (None: not stopped by a signal)."""
        self._previous_sigint = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has registered its SIGTERM handler by now (at the start of `fit`).
        single = trainer.world_size == 1 and not SLURMEnvironment.detect()
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. a background job
        if single and not ignored and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signal.SIGINT
        print(
            "\nCtrl-C: stopping after this step (press it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):  # Lightning's: it would log "Received SIGTERM", which this is not
            log = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
            level = log.level
            log.setLevel(logging.WARNING)
            try:
                handler(signal.SIGTERM, frame)
            finally:
                log.setLevel(level)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.received_sigterm:
            return
        self.signum = self.signum or signal.SIGTERM
        if trainer.world_size == 1:
            self.checkpointer.save_mid_epoch(trainer, batch_idx)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.signum = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signum = self.signum or signal.SIGTERM
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def stopped(self, run_dir: Path, step: int, show: bool) -> TrainingInterrupted:
        """The exception that reports this stop: where it stopped and how to resume."""
        name = signal.Signals(self.signum).name
        resume = f"medtune train --resume {shlex.quote(str(run_dir))}"
        progress = checkpoint_progress(Path(run_dir))
        if progress is None:
            where = f"no checkpoint was written yet ({resume} starts the run over)"
        else:
            where = f"the trainer state of step {progress[1]} is saved; continue with: {resume}"
        return TrainingInterrupted(f"stopped by {name} at step {step}; {where}", self.signum, show)


def checkpoint_progress(run_dir: Path) -> tuple[int, int] | None:
    """(epoch, global step) of `RUN_DIR/trainer_state/last.ckpt`, None when there is none; the
    epoch is 1-based: the one in progress, or just finished, when it was written."""
    from medtune.artifacts.run_dir import RunDir

    path = RunDir(run_dir).last_ckpt
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"]) + 1, int(state["global_step"])
