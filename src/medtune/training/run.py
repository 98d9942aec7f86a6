"""`train_run`: one training run from an experiment config into a run directory.

    RUN_DIR/config.yaml              resolved experiment config (every default filled in)
    RUN_DIR/adapter/                 best adapter-only folder (by validation mean Dice)
    RUN_DIR/adapter_last/            adapter-only folder of the last epoch
    RUN_DIR/trainer_state/last.ckpt  Lightning checkpoint for resuming (local, torch format)
    RUN_DIR/logs/                    metrics.csv (and TensorBoard events when installed)
    RUN_DIR/train_summary.json       wall time, peak memory, parameter counts, best metric...

See docs/training.md for the format and the resume guarantees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from medtune.core.configbase import dump_yaml, to_dict
from medtune.core.errors import MedtuneInputError
from medtune.training.checkpoint import (
    LAST_CKPT,
    STATE_DIR,
    AtomicCheckpointIO,
    RunCheckpointer,
    clean_temporary,
    write_adapter,
)
from medtune.training.config import ExperimentConfig, load_config

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train_summary.json"
# Dataset properties that travel with adapters (prediction needs them without the dataset).
PROPS_KEYS = (
    "name",
    "channel_names",
    "labels",
    "regions",
    "modality",
    "medtune",
    "file_ending",
    "spacing",
    "normalisation",
)


def _rank() -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _log(msg: str) -> None:
    if _rank() == 0:
        print(msg, file=sys.stderr, flush=True)


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> `bf16-mixed` on CUDA, `32-true` otherwise; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if _uses_cuda(accelerator) else "32-true"


def load_run_config(run_dir: str | Path, overrides: dict[str, Any] | None = None):
    """The resolved config of an existing run directory, with dotted overrides applied."""

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MedtuneInputError(
            f"{path}: expected the config of a run directory written by medtune train, found none"
        )
    return load_config(path, overrides)


def prepare_data(cfg: ExperimentConfig) -> tuple[Path, dict[str, Any], list[str], list[str]]:
    """Cache, dataset properties, training and validation case ids of the configured fold."""
    from medtune.data.preprocess import ensure_cache, read_props
    from medtune.data.splits import get_splits

    if not cfg.data.root:
        raise MedtuneInputError("data.root is not set: pass --data DIR (a dataset folder)")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise MedtuneInputError(f"--data {root}: expected a dataset folder, found no such folder")
    cache = ensure_cache(root, cfg.data.cache, spacing=cfg.data.spacing)
    props = read_props(cache)
    n_ch, k = len(props["channel_names"]), len(props["labels"])
    if cfg.model.backbone.in_chans != n_ch:
        raise MedtuneInputError(
            f"model.backbone.in_chans: the dataset {root} has {n_ch} channel(s) "
            f"({', '.join(props['channel_names'])}), the config says {cfg.model.backbone.in_chans}"
        )
    if cfg.model.num_classes != k or sorted(props["labels"].values()) != list(range(k)):
        raise MedtuneInputError(
            f"model.num_classes: the dataset {root} has labels {props['labels']} "
            f"(expected 0..K-1), the config says {cfg.model.num_classes} classes"
        )
    split_dir = root if (root / "splits_final.json").is_file() else cache
    splits = get_splits(split_dir, props["cases"], cfg.data.num_folds, cfg.data.split_seed)
    if cfg.data.fold >= len(splits):
        raise MedtuneInputError(
            f"data.fold: {split_dir / 'splits_final.json'} has {len(splits)} folds, found fold {cfg.data.fold}"
        )
    if len(splits) != cfg.data.num_folds:
        _log(
            f"{split_dir / 'splits_final.json'}: using its {len(splits)} folds "
            f"(data.num_folds={cfg.data.num_folds} applies only when the file is written)"
        )
    fold = splits[cfg.data.fold]
    return Path(cache), props, list(fold["train"]), list(fold["val"])


def _convert_sync_bn(model: torch.nn.Module) -> int:
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


def _peak_memory() -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def _loggers(run_dir: Path) -> list:
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
        n = torch.cuda.device_count() if _uses_cuda(tc.accelerator) else 1
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


def _bar_on_stderr(method: str):
    def init(self):
        with contextlib.redirect_stdout(sys.stderr):
            return getattr(TQDMProgressBar, method)(self)

    init.__name__ = method
    return init


for _stage in ("sanity", "train", "validation", "test", "predict"):
    setattr(StderrProgressBar, f"init_{_stage}_tqdm", _bar_on_stderr(f"init_{_stage}_tqdm"))


class AdapterExtra:
    """The `extra` of adapter folders: what prediction needs without the dataset (picklable,
    for `ddp_spawn`)."""

    def __init__(self, dataset_props: dict[str, Any], crop_size, sw_overlap: float, seed: int = 0):
        self.dataset_props = dataset_props
        self.crop_size = [int(c) for c in crop_size]
        self.sw_overlap = float(sw_overlap)
        self.seed = int(seed)  # rebuilds a randomly initialised frozen backbone

    def __call__(self, module) -> dict[str, Any]:
        done = [h["epoch"] for h in module.history if "train_loss" in h]
        return {
            "dataset": self.dataset_props,
            "crop_size": self.crop_size,
            "sw_overlap": self.sw_overlap,
            "seed": self.seed,
            "epochs_trained": max(done, default=0),
            "best": module.best,
        }


def _start_run_dir(out: Path, resume: bool) -> None:
    """Check and create the run directory; a new run never reuses an existing one."""
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise MedtuneInputError(
                f"--resume {out}: expected a run directory with {CONFIG_FILE}, found none"
            )
        clean_temporary(out / STATE_DIR)
        clean_temporary(out)
        return
    if out.exists() and any(out.iterdir()):
        raise MedtuneInputError(
            f"--out {out}: the folder exists and is not empty; continue it with --resume {out} "
            "or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def _reload_final_state(module, ckpt: Path) -> tuple[int, int]:
    """Load the final epoch's checkpoint into `module` (weights, best, history); returns
    (epochs done, global step). A no-op for in-process strategies, it brings the results of
    spawned processes (`ddp_spawn`) back into the launching process."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=False)
    module.best = state["medtune"]["best"]
    module.history = state["medtune"]["history"]
    return int(state["epoch"]) + 1, int(state["global_step"])


def _absorb_spawned_validation(module, trainer, epoch: int) -> None:
    """After `ddp_spawn` the validation ran in other processes: take its logged metrics."""
    metrics = trainer.callback_metrics
    if module.last_validated_epoch == epoch or "val/mean_dice" not in metrics:
        return
    regions = {r: float(metrics[f"val/dice_{r}"]) for r in module.regions}
    mean = float(metrics["val/mean_dice"])
    entry = next((h for h in module.history if h["epoch"] == epoch), None)
    if entry is None:
        entry = {"epoch": epoch}
        module.history.append(entry)
    entry.update(val_mean_dice=mean, val_dice=regions)
    if mean > module.best["mean_dice"]:
        module.best = {"mean_dice": mean, "epoch": epoch, "regions": regions}


def train_run(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train `cfg` into run directory `out_dir` (see the module docstring); returns the summary.

    With `resume`, continue from `out_dir/trainer_state/last.ckpt` (the last complete
    checkpoint; a run killed before its first checkpoint starts over). Under DDP every process
    calls this; only global rank 0 writes files. `callbacks` are extra Lightning callbacks.
    """
    import lightning.pytorch as pl

    from medtune.modeling.model import build_model
    from medtune.modeling.params import count_parameters
    from medtune.training.datamodule import SegDataModule
    from medtune.training.module import SegTrainModule, effective_warmup_epochs

    t0 = time.time()
    out = Path(out_dir).resolve()
    rank = _rank()
    if rank == 0:
        _start_run_dir(out, resume)
    cache, props, train_ids, val_ids = prepare_data(cfg)
    cfg.data.root = str(Path(cfg.data.root).resolve())
    cfg.data.cache = str(cache.resolve())
    if rank == 0:
        dump_yaml(to_dict(cfg), out / CONFIG_FILE)
    tc = cfg.train
    if effective_warmup_epochs(tc) != tc.warmup_epochs:
        _log(
            f"train.warmup_epochs {tc.warmup_epochs} >= max_epochs {tc.max_epochs}: "
            f"warm-up shortened to {effective_warmup_epochs(tc)} epoch(s)"
        )

    pl.seed_everything(tc.seed, workers=True, verbose=False)
    report: list[str] = []
    model = build_model(cfg.model, load_weights=True, report=report)
    for line in report:
        _log(f"weights: {line}")
    counts = count_parameters(model)
    _log(
        f"model: {counts.total:,} parameters, {counts.tuned:,} tuned "
        f"({counts.tuned_pct:.2f} %), {counts.inserted:,} inserted"
    )
    pretrained = bool(cfg.model.backbone.pretrained) and model.method.uses_pretrained
    module = SegTrainModule(
        model, tc, cfg.data.crop_size, props["regions"], save_frozen=not pretrained
    )
    datamodule = SegDataModule(cache, train_ids, val_ids, cfg.data, tc)
    with warnings.catch_warnings():
        _quiet_lightning()
        return _fit(cfg, out, resume, callbacks, module, datamodule, counts, t0, props)


def _quiet_lightning() -> None:
    """Silence Lightning notes that do not apply to medtune's set-up (inside catch_warnings)."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory.*exists.*")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")
    # validation metrics and the epoch loss are reduced over processes before they are logged
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def _fit(cfg, out: Path, resume: bool, callbacks, module, datamodule, counts, t0, props):
    """Build the Trainer, fit (resuming when asked), validate at the end, write the results."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor

    tc = cfg.train
    model = module.model
    accelerator = tc.accelerator
    model_config = to_dict(cfg.model)
    adapter_extra = AdapterExtra(
        {k: props.get(k) for k in PROPS_KEYS}, cfg.data.crop_size, tc.sw_overlap, tc.seed
    )
    checkpointer = RunCheckpointer(out, tc.checkpoint_every_n_steps, model_config, adapter_extra)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=resolve_strategy(tc),
        precision=resolve_precision(tc.precision, accelerator),
        max_epochs=tc.max_epochs,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        check_val_every_n_epoch=tc.val_every if tc.val_every > 0 else tc.max_epochs + 1,
        num_sanity_val_steps=0,
        deterministic=tc.deterministic,
        logger=_loggers(out),
        callbacks=[
            checkpointer,
            LearningRateMonitor("step"),
            *([StderrProgressBar()] if tc.progress_bar else []),
        ]
        + list(callbacks or []),
        enable_checkpointing=True,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out),
    )
    if tc.sync_batchnorm and trainer.world_size > 1 and _uses_cuda(accelerator):
        _log(f"SyncBatchNorm: {_convert_sync_bn(model)} trainable BatchNorm layer(s)")
    ckpt = out / STATE_DIR / LAST_CKPT
    ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
    if resume:
        _log(f"resuming from {ckpt}" if ckpt_path else f"{ckpt} not found: starting over")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    epochs_done, global_step = _reload_final_state(module, ckpt)
    if module.last_validated_epoch != epochs_done:  # validate after the last epoch too
        module.final_validation = True
        trainer.validate(module, datamodule=datamodule, verbose=False)  # writes adapter/ if best
        module.final_validation = False
        _absorb_spawned_validation(module, trainer, epochs_done)
    summary = {
        "run_dir": str(out),
        "wall_time_s": round(time.time() - t0, 2),
        "resumed": bool(ckpt_path),
        **{k: round(v, 3) for k, v in _peak_memory().items()},
        "parameters": counts.as_dict(),
        "tuned_pct": round(counts.tuned_pct, 4),
        "epochs": epochs_done,
        "global_step": global_step,
        "best": module.best,
        "history": module.history,
        "train_cases": list(datamodule.train_ids),
        "val_cases": list(datamodule.val_ids),
        "precision": trainer.precision,
        "world_size": trainer.world_size,
    }
    if trainer.is_global_zero:
        write_adapter(
            model,
            out / "adapter_last",
            model_config,
            adapter_extra(module),
            checkpointer.backbone_sha256(model),
        )
        if not (out / "adapter" / "adapter_config.json").is_file():
            shutil.copytree(out / "adapter_last", out / ".tmp-adapter", dirs_exist_ok=True)
            os.replace(out / ".tmp-adapter", out / "adapter")
        from medtune.data.io import save_json

        save_json(summary, out / SUMMARY_FILE)
    return summary


def is_global_zero() -> bool:
    """True in the process that writes the run directory (global rank 0)."""
    return _rank() == 0


def summary_line(summary: dict[str, Any]) -> str:
    """A one-line human summary of a finished run."""
    best = summary.get("best") or {}
    regions = ", ".join(f"{k} {v:.3f}" for k, v in (best.get("regions") or {}).items())
    return (
        f"trained {summary['epochs']} epoch(s), {summary['global_step']} steps in "
        f"{summary['wall_time_s']:.1f} s; best mean Dice {best.get('mean_dice', float('nan')):.4f} "
        f"(epoch {best.get('epoch')}: {regions}); run dir {summary['run_dir']}"
    )


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The `train_summary.json` of a finished run."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise MedtuneInputError(f"{path}: expected a finished run's summary, found none")
    return json.loads(path.read_text())
