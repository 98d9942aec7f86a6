"""`train_run`: one training run from an experiment config into a run directory.

The folder's layout (config.yaml, adapter/, adapter_last/, trainer_state/last.ckpt, logs/,
train_summary.json, run.json) is `medtune.artifacts.run_dir`. The flow:

    config -> prepare_data (cache, dataset properties, fold) -> build_model (weights, method)
      -> SegTrainModule + SegDataModule -> Lightning fit (resumable) -> final validation
      -> adapter/ (best), adapter_last/, train_summary.json

See docs/training.md for the resume guarantees.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtune.artifacts.run_dir import RunDir
from medtune.core.configbase import dump_yaml, to_dict
from medtune.core.errors import MedtuneInputError
from medtune.data.props import DatasetProps
from medtune.modeling.params import ParamCounts
from medtune.training.checkpoint import (
    AtomicCheckpointIO,
    RunCheckpointer,
    clean_temporary,
    write_adapter,
)
from medtune.training.config import ExperimentConfig, load_config
from medtune.training.setup import (
    StderrProgressBar,
    convert_sync_bn,
    loggers,
    peak_memory,
    quiet_lightning,
    resolve_precision,
    resolve_strategy,
    uses_cuda,
)


def _rank() -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _log(msg: str) -> None:
    if _rank() == 0:
        print(msg, file=sys.stderr, flush=True)


def load_run_config(run_dir: str | Path, overrides: dict[str, Any] | None = None):
    """The resolved config of an existing run directory, with dotted overrides applied."""
    run = RunDir(Path(run_dir))
    if not run.is_run():
        raise MedtuneInputError(
            f"{run.config}: expected the config of a run directory written by medtune train, found none"
        )
    run.format_version()
    return load_config(run.config, overrides)


@dataclass
class TrainingData:
    """What `prepare_data` finds for a config: the cache and the configured fold."""

    cache: Path
    props: DatasetProps
    train_ids: list[str]
    val_ids: list[str]


def _check_model_fits(cfg: ExperimentConfig, props: DatasetProps, root: Path) -> None:
    if cfg.model.backbone.in_chans != props.num_channels:
        raise MedtuneInputError(
            f"model.backbone.in_chans: the dataset {root} has {props.num_channels} channel(s) "
            f"({', '.join(props.channel_names)}), the config says {cfg.model.backbone.in_chans}"
        )
    k = props.num_classes
    if cfg.model.num_classes != k or sorted(props.labels.values()) != list(range(k)):
        raise MedtuneInputError(
            f"model.num_classes: the dataset {root} has labels {props.labels} "
            f"(expected 0..K-1), the config says {cfg.model.num_classes} classes"
        )


def prepare_data(cfg: ExperimentConfig) -> TrainingData:
    """Cache (built or updated), dataset properties and the cases of the configured fold."""
    from medtune.data.preprocess import ensure_cache, read_cache_index
    from medtune.data.splits import find_splits, select_fold

    if not cfg.data.root:
        raise MedtuneInputError("data.root is not set: pass --data DIR (a dataset folder)")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise MedtuneInputError(f"--data {root}: expected a dataset folder, found no such folder")
    cache = ensure_cache(
        root, cfg.data.cache, spacing=cfg.data.spacing, slice_axis=cfg.data.slice_axis
    )
    index = read_cache_index(cache)
    _check_model_fits(cfg, index.props, root)
    d = cfg.data
    splits, where = find_splits(index.cases, [root, cache], d.num_folds, d.split_seed, cache)
    fold = select_fold(splits, d.fold, where, "data.fold")
    if len(splits) != d.num_folds:
        _log(
            f"{where}: using its {len(splits)} folds "
            f"(data.num_folds={d.num_folds} applies only when the file is written)"
        )
    return TrainingData(Path(cache), index.props, list(fold["train"]), list(fold["val"]))


class AdapterExtra:
    """The `extra` of adapter folders: what prediction needs without the dataset (picklable,
    for `ddp_spawn`)."""

    def __init__(self, props: DatasetProps, crop_size, sw_overlap: float, seed: int = 0):
        self.dataset_props = props.to_dict()
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


def _start_run_dir(run: RunDir, resume: bool) -> None:
    """Check and create the run directory; a new run never reuses an existing one."""
    if resume:
        if not run.is_run():
            raise MedtuneInputError(
                f"--resume {run.path}: expected a run directory with {run.config.name}, found none"
            )
        run.format_version()
        clean_temporary(run.state_dir)
        clean_temporary(run.path)
        return
    if run.path.exists() and any(run.path.iterdir()):
        raise MedtuneInputError(
            f"--out {run.path}: the folder exists and is not empty; continue it with --resume "
            f"{run.path} or choose another --out"
        )
    run.path.mkdir(parents=True, exist_ok=True)


@dataclass
class RunContext:
    """One run's inputs, as `_fit` needs them."""

    cfg: ExperimentConfig
    run: RunDir
    resume: bool
    data: TrainingData
    counts: ParamCounts
    started: float
    callbacks: list = field(default_factory=list)


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

    from medtune.data.io import save_json
    from medtune.modeling.model import build_model
    from medtune.modeling.params import count_parameters
    from medtune.training.datamodule import SegDataModule
    from medtune.training.module import SegTrainModule, effective_warmup_epochs

    started = time.time()
    run = RunDir(Path(out_dir).resolve())
    if _rank() == 0:
        _start_run_dir(run, resume)
    data = prepare_data(cfg)
    cfg.data.root = str(Path(cfg.data.root).resolve())
    cfg.data.cache = str(data.cache.resolve())
    cfg.data.slice_axis = data.props.slice_axis  # `auto` as the cache resolved it
    if _rank() == 0:
        dump_yaml(to_dict(cfg), run.config)
        if not resume or not run.run_file.is_file():
            save_json(run.run_file_content(), run.run_file)
    tc = cfg.train
    if effective_warmup_epochs(tc) != tc.warmup_epochs:
        _log(
            f"train.warmup_epochs {tc.warmup_epochs} >= max_epochs {tc.max_epochs}: "
            f"warm-up shortened to {effective_warmup_epochs(tc)} epoch(s)"
        )

    pl.seed_everything(tc.seed, workers=True, verbose=False)
    report: list[str] = []
    model = build_model(cfg.model, load_weights=True, report=report)
    model.backbone.check_crop(cfg.data.crop_size)
    for line in report:
        _log(f"weights: {line}")
    counts = count_parameters(model)
    _log(
        f"model: {counts.total:,} parameters, {counts.tuned:,} tuned "
        f"({counts.tuned_pct:.2f} %), {counts.inserted:,} inserted"
    )
    pretrained = bool(cfg.model.backbone.pretrained) and model.method.uses_pretrained
    module = SegTrainModule(
        model, tc, cfg.data.crop_size, data.props.regions, save_frozen=not pretrained
    )
    datamodule = SegDataModule(data.cache, data.train_ids, data.val_ids, cfg.data, tc)
    ctx = RunContext(cfg, run, resume, data, counts, started, list(callbacks or []))
    with warnings.catch_warnings():
        quiet_lightning()
        return _fit(ctx, module, datamodule)


def _trainer(ctx: RunContext, checkpointer: RunCheckpointer):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor

    tc = ctx.cfg.train
    return pl.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=resolve_strategy(tc),
        precision=resolve_precision(tc.precision, tc.accelerator),
        max_epochs=tc.max_epochs,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        check_val_every_n_epoch=tc.val_every if tc.val_every > 0 else tc.max_epochs + 1,
        num_sanity_val_steps=0,
        deterministic=tc.deterministic,
        logger=loggers(ctx.run.path),
        callbacks=[
            checkpointer,
            LearningRateMonitor("step"),
            *([StderrProgressBar()] if tc.progress_bar else []),
            *ctx.callbacks,
        ],
        enable_checkpointing=True,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(ctx.run.path),
    )


def _reload_final_state(module, ckpt: Path) -> tuple[int, int]:
    """Load the final epoch's checkpoint into `module` (weights, best, history); returns
    (epochs done, global step). A no-op for in-process strategies, it brings the results of
    spawned processes (`ddp_spawn`) back into the launching process."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=False)
    module.best = state["medtune"]["best"]
    module.history = state["medtune"]["history"]
    return int(state["epoch"]) + 1, int(state["global_step"])


def _fit(ctx: RunContext, module, datamodule) -> dict[str, Any]:
    """Build the Trainer, fit (resuming when asked), validate at the end, write the results."""
    tc, run = ctx.cfg.train, ctx.run
    model_config = to_dict(ctx.cfg.model)
    adapter_extra = AdapterExtra(ctx.data.props, ctx.cfg.data.crop_size, tc.sw_overlap, tc.seed)
    checkpointer = RunCheckpointer(
        run.path, tc.checkpoint_every_n_steps, model_config, adapter_extra
    )
    trainer = _trainer(ctx, checkpointer)
    if tc.sync_batchnorm and trainer.world_size > 1 and uses_cuda(tc.accelerator):
        _log(f"SyncBatchNorm: {convert_sync_bn(module.model)} trainable BatchNorm layer(s)")
    ckpt_path = str(run.last_ckpt) if ctx.resume and run.last_ckpt.is_file() else None
    if ctx.resume:
        _log(
            f"resuming from {run.last_ckpt}"
            if ckpt_path
            else f"{run.last_ckpt} not found: starting over"
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    epochs_done, global_step = _reload_final_state(module, run.last_ckpt)
    if module.last_validated_epoch != epochs_done:  # validate after the last epoch too
        module.final_validation = True
        trainer.validate(module, datamodule=datamodule, verbose=False)  # writes adapter/ if best
        module.final_validation = False
        module.absorb_logged_validation(trainer.callback_metrics, epochs_done)
    summary = _summary(ctx, module, datamodule, trainer, epochs_done, global_step, ckpt_path)
    if trainer.is_global_zero:
        _write_results(run, module, model_config, adapter_extra, checkpointer, summary)
    return summary


def _summary(ctx, module, datamodule, trainer, epochs_done, global_step, ckpt_path) -> dict:
    return {
        "run_dir": str(ctx.run.path),
        "wall_time_s": round(time.time() - ctx.started, 2),
        "resumed": bool(ckpt_path),
        **{k: round(v, 3) for k, v in peak_memory().items()},
        "parameters": ctx.counts.as_dict(),
        "tuned_pct": round(ctx.counts.tuned_pct, 4),
        "epochs": epochs_done,
        "global_step": global_step,
        "best": module.best,
        "history": module.history,
        "train_cases": list(datamodule.train_ids),
        "val_cases": list(datamodule.val_ids),
        "precision": trainer.precision,
        "world_size": trainer.world_size,
    }


def _write_results(run: RunDir, module, model_config, adapter_extra, checkpointer, summary):
    """adapter_last/, adapter/ (when no validation ever wrote one) and train_summary.json."""
    from medtune.data.io import save_json

    model = module.model
    write_adapter(
        model,
        run.adapter_last,
        model_config,
        adapter_extra(module),
        checkpointer.backbone_sha256(model),
    )
    if not (run.adapter / "adapter_config.json").is_file():
        tmp = run.path / ".tmp-adapter"
        shutil.copytree(run.adapter_last, tmp, dirs_exist_ok=True)
        os.replace(tmp, run.adapter)
    save_json(summary, run.summary)


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
