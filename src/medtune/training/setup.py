"""What Lightning needs for a run: accelerator, precision, strategy, SyncBatchNorm, loggers
(continuing `logs/metrics.csv` on resume), the validation schedule, a progress bar on stderr,
and the warnings that do not apply to medtune's set-up."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import resource
import sys
import warnings
from pathlib import Path

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from medtune.artifacts.run_dir import LOGS_DIR
from medtune.core.atomic import atomic_write_text
from medtune.core.errors import MedtuneInputError


def uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def check_devices(tc) -> None:
    """Refuse an accelerator this machine does not have, before anything is written."""
    if tc.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise MedtuneInputError(
            f"train.accelerator {tc.accelerator}: no CUDA GPU found (torch.cuda.is_available() "
            "is false); use --train.accelerator cpu or auto"
        )


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> `bf16-mixed` on CUDA, `32-true` otherwise; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_cuda(accelerator) else "32-true"


def convert_sync_bn(model: torch.nn.Module) -> int:
    """Replace BatchNorm layers that have trainable parameters by `SyncBatchNorm`."""
    from torch.nn.modules.batchnorm import _BatchNorm

    n = 0
    for name, m in list(model.named_modules()):
        if not name or not isinstance(m, _BatchNorm) or isinstance(m, torch.nn.SyncBatchNorm):
            continue
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, torch.nn.SyncBatchNorm.convert_sync_batchnorm(m))
            n += 1
    return n


def peak_memory() -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class _ContinuedCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing `metrics.csv` instead of deleting it.

    Rows of steps before `keep_below_step` (those the resumed checkpoint holds) are kept;
    later rows, logged after that checkpoint by an interrupted run, are dropped because the
    resumed run logs those steps again.
    """

    def __init__(self, log_dir: str, keep_below_step: int):
        self._keep_below_step = keep_below_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if not _row_step(r) >= self._keep_below_step]
        self.metrics_keys = sorted(keys)
        if len(kept) != len(rows):
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(path, text.getvalue())


class RunCSVLogger(CSVLogger):
    """`RUN_DIR/logs/metrics.csv`, continued on resume (see `_ContinuedCSVWriter`)."""

    def __init__(self, run_dir: Path, keep_below_step: int = 0):
        super().__init__(save_dir=str(run_dir), name=LOGS_DIR, version="")
        self._keep_below_step = keep_below_step

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuedCSVWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSVWriter(self.log_dir, self._keep_below_step)
        return self._experiment


def loggers(run_dir: Path, keep_below_step: int = 0) -> list:
    """The CSV logger (rows of steps before `keep_below_step` kept from an earlier run of the
    folder, i.e. the steps of the checkpoint a resume starts from) and TensorBoard when
    installed."""
    loggers: list = [RunCSVLogger(run_dir, keep_below_step)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir=str(run_dir), name=LOGS_DIR, version="tensorboard"))
    return loggers


class ValidationSchedule(Callback):
    """Validate every `val_every` epochs (0: never) and after the last epoch, inside the epoch.

    Lightning validates at the end of an epoch when `(epoch + 1) % check_val_every_n_epoch ==
    0`, before the epoch-end hooks, so the epoch-end checkpoint holds the result of that
    validation (history, best). This sets that interval at the start of every epoch (and of
    a resumed fit) so that the last epoch, whatever `max_epochs` is now, is validated too.
    """

    def __init__(self, val_every: int):
        self.val_every = val_every

    def due(self, epoch: int, max_epochs: int) -> bool:
        """Whether epoch `epoch` (1-based) ends with a validation."""
        return epoch >= max_epochs or (self.val_every > 0 and epoch % self.val_every == 0)

    def _schedule(self, trainer) -> None:
        epoch = trainer.current_epoch + 1
        # (epoch) % (epoch + 1) is never 0: no validation at the end of this epoch
        trainer.check_val_every_n_epoch = 1 if self.due(epoch, trainer.max_epochs) else epoch + 1

    def on_train_start(self, trainer, pl_module) -> None:
        self._schedule(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._schedule(trainer)


def _processes(tc) -> int:
    """Processes Lightning will start for `train.devices` x `train.num_nodes`."""
    d = tc.devices
    if isinstance(d, str) and d.strip() not in ("auto", "-1"):
        d = [x for x in d.split(",") if x.strip()]
        n = len(d) if len(d) > 1 else int(d[0])
    elif isinstance(d, int) and d > 0:
        n = d
    else:  # auto / -1: every visible GPU, or one CPU process
        n = torch.cuda.device_count() if uses_cuda(tc.accelerator) else 1
    return max(1, n) * tc.num_nodes


def resolve_strategy(tc):
    """DDP with unused-parameter detection for `ddp`, `ddp_spawn`, and `auto` with several
    processes (a method can own a parameter that a backbone never uses, e.g. the first
    Med-Adapter's inter-stage projection); other Lightning strategy names pass through
    (`ddp_find_unused_parameters_false` opts out)."""
    strategy = tc.strategy
    if strategy == "auto":
        if _processes(tc) <= 1:
            return "auto"
        strategy = "ddp"
    if strategy not in ("ddp", "ddp_spawn"):
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    start = "spawn" if strategy == "ddp_spawn" else "popen"
    return DDPStrategy(find_unused_parameters=True, start_method=start)


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar on stderr (Lightning passes `file=sys.stdout`; stdout is for results).

    Refreshed every `refresh_rate` batches (the run passes `train.log_every_n_steps`): each
    refresh reads the logged loss from the device, a host synchronisation.
    """

    def init_sanity_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_test_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    def init_predict_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()


def quiet_lightning() -> None:
    """Silence Lightning notes that do not apply to medtune's set-up (inside catch_warnings)."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory.*exists.*")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")
    # validation metrics and the epoch loss are reduced over processes before they are logged
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting.*")
    # Lightning's own use of a torch API that newer torch deprecates
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
