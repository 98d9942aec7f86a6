"""What Lightning needs for a run: accelerator, precision, strategy, SyncBatchNorm, loggers, a
progress bar on stderr, and the warnings that do not apply to medtune's set-up."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import TQDMProgressBar


def uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


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


def loggers(run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard"))
    return loggers


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
    """Lightning's tqdm bar on stderr (Lightning passes `file=sys.stdout`; stdout is for results)."""

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
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
