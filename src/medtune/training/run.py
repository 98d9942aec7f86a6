"""`train_run`: one training run from an experiment config into a run directory.

The folder's layout (config.yaml, adapter/, adapter_last/, trainer_state/last.ckpt, logs/,
train_summary.json, run.json) is `medtune.artifacts.run_dir`. The flow:

    config -> prepare_data (cache, dataset properties, fold) -> build_model (weights, method)
      -> SegTrainModule + SegDataModule -> Trainer (nothing is written before this point)
      -> config.yaml -> Lightning fit (resumable; the last epoch validated inside it;
         SIGTERM / SIGINT: checkpoint and `TrainingInterrupted`)
      -> adapter/ (best), adapter_last/, train_summary.json

See docs/training.md for the resume guarantees.
"""

from __future__ import annotations

import errno
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
from medtune.core.errors import DiskFullError, MedtuneInputError
from medtune.data.io import save_json
from medtune.data.props import DatasetProps
from medtune.modeling.params import ParamCounts
from medtune.training.checkpoint import (
    AtomicCheckpointIO,
    RunCheckpointer,
    clean_run_temporary,
    write_adapter,
)
from medtune.training.config import ExperimentConfig, load_config
from medtune.training.interrupt import StopOnSignal, checkpoint_progress
from medtune.training.setup import (
    StderrProgressBar,
    ValidationSchedule,
    check_devices,
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


def _open_run_dir(run: RunDir, resume: bool) -> None:
    """Create the run directory (a resumed one: remove what a killed run left)."""
    if resume:
        clean_run_temporary(run)
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

    Everything is checked first (run folder, devices, data, model build with its weights,
    Lightning's settings): a failure there writes nothing into `out_dir`. With `resume`,
    continue from `out_dir/trainer_state/last.ckpt` (the last complete checkpoint; a run
    killed before its first checkpoint starts over). SIGTERM / SIGINT stop at the next step
    boundary with a checkpoint and raise `TrainingInterrupted` (`medtune.training.interrupt`);
    a full disk raises `DiskFullError` after removing temporary files. Under DDP every process
    calls this; only global rank 0 writes files. `callbacks` are extra Lightning callbacks.
    """
    from medtune.training.datamodule import SegDataModule
    from medtune.training.module import effective_warmup_epochs

    started = time.time()
    run = RunDir(Path(out_dir).resolve())
    tc = cfg.train
    if _rank() == 0:
        run.check_start(resume)
    check_devices(tc)
    if resume:
        _check_resumed_epochs(run, tc.max_epochs)
    data = prepare_data(cfg)
    cfg.data.root = str(Path(cfg.data.root).resolve())
    cfg.data.cache = str(data.cache.resolve())
    cfg.data.slice_axis = data.props.slice_axis  # `auto` as the cache resolved it
    if effective_warmup_epochs(tc) != tc.warmup_epochs:
        _log(
            f"train.warmup_epochs {tc.warmup_epochs} >= max_epochs {tc.max_epochs}: "
            f"warm-up shortened to {effective_warmup_epochs(tc)} epoch(s)"
        )
    module, counts = _build_module(cfg, data)
    datamodule = SegDataModule(data.cache, data.train_ids, data.val_ids, cfg.data, tc)
    ctx = RunContext(cfg, run, resume, data, counts, started, list(callbacks or []))
    with warnings.catch_warnings():
        quiet_lightning()
        parts = _trainer(ctx)  # Lightning checks devices, strategy and precision here
        try:
            if _rank() == 0:
                _open_run_dir(run, resume)
                dump_yaml(to_dict(cfg), run.config)
                if not resume or not run.run_file.is_file():
                    save_json(run.run_file_content(), run.run_file)
            return _fit(ctx, parts, module, datamodule)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or isinstance(exc, DiskFullError):
                raise
            clean_run_temporary(run)
            raise DiskFullError(
                f"--out {run.path}: no space left on device while writing "
                f"{exc.filename or 'the run directory'} (temporary files removed); free space, "
                f"then continue with: medtune train --resume {run.path}"
            ) from exc


def _check_resumed_epochs(run: RunDir, max_epochs: int) -> None:
    """A resume cannot end before the epoch its checkpoint has reached."""
    progress = checkpoint_progress(run.path)
    if progress and max_epochs < progress[0]:
        raise MedtuneInputError(
            f"train.max_epochs {max_epochs}: {run.last_ckpt} is in epoch {progress[0]}; "
            f"expected at least {progress[0]} (more to extend the run)"
        )


def _build_module(cfg: ExperimentConfig, data: TrainingData):
    """The seeded model (pre-trained weights loaded, method applied) in its Lightning module;
    returns (module, parameter counts)."""
    import lightning.pytorch as pl

    from medtune.modeling.model import build_model
    from medtune.modeling.params import count_parameters
    from medtune.training.module import SegTrainModule

    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    report: list[str] = []
    model = build_model(cfg.model, load_weights=True, report=report)
    model.backbone.check_crop(cfg.data.crop_size)
    for line in report:
        _log(f"weights: {line}")
    counts = count_parameters(model)
    if counts.tuned == 0:
        raise MedtuneInputError(
            f"model.method {cfg.model.method['name']}: expected trainable parameters, found none"
        )
    _log(
        f"model: {counts.total:,} parameters, {counts.tuned:,} tuned "
        f"({counts.tuned_pct:.2f} %), {counts.inserted:,} inserted"
    )
    pretrained = bool(cfg.model.backbone.pretrained) and model.method.uses_pretrained
    module = SegTrainModule(
        model, cfg.train, cfg.data.crop_size, data.props.regions, save_frozen=not pretrained
    )
    _log(f"model: {module.fold_note}")
    return module, counts


@dataclass
class TrainerParts:
    """The Trainer of a run and the callbacks `_fit` reads back."""

    trainer: Any
    checkpointer: RunCheckpointer
    stop: StopOnSignal
    model_config: dict[str, Any]
    adapter_extra: AdapterExtra
    ckpt_path: str | None
    resumed_from: int | None
    """Global step of the checkpoint this fit continues from (None: a fresh start)."""


def _trainer(ctx: RunContext) -> TrainerParts:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor

    tc, run = ctx.cfg.train, ctx.run
    model_config = to_dict(ctx.cfg.model)
    adapter_extra = AdapterExtra(ctx.data.props, ctx.cfg.data.crop_size, tc.sw_overlap, tc.seed)
    checkpointer = RunCheckpointer(
        run.path, tc.checkpoint_every_n_steps, model_config, adapter_extra
    )
    stop = StopOnSignal(checkpointer)
    ckpt_path = str(run.last_ckpt) if ctx.resume and run.last_ckpt.is_file() else None
    progress = checkpoint_progress(run.path) if ckpt_path else None
    resumed_from = progress[1] if progress else None
    try:
        trainer = pl.Trainer(
            accelerator=tc.accelerator,
            devices=tc.devices,
            num_nodes=tc.num_nodes,
            strategy=resolve_strategy(tc),
            precision=resolve_precision(tc.precision, tc.accelerator),
            max_epochs=tc.max_epochs,
            accumulate_grad_batches=tc.accumulate_grad_batches,
            check_val_every_n_epoch=1,  # ValidationSchedule sets it per epoch
            num_sanity_val_steps=0,
            deterministic=tc.deterministic,
            logger=loggers(run.path, keep_below_step=resumed_from or 0),
            callbacks=[
                checkpointer,
                ValidationSchedule(tc.val_every),
                stop,
                LearningRateMonitor("step"),
                *([StderrProgressBar(tc.log_every_n_steps)] if tc.progress_bar else []),
                *ctx.callbacks,
            ],
            enable_checkpointing=True,
            enable_progress_bar=tc.progress_bar,
            enable_model_summary=False,
            log_every_n_steps=tc.log_every_n_steps,
            use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run.path),
        )
    except (MisconfigurationException, ValueError) as exc:  # Lightning's two kinds of refusal
        raise MedtuneInputError(
            f"train.accelerator {tc.accelerator}, devices {tc.devices}, strategy {tc.strategy}, "
            f"precision {tc.precision}: Lightning refuses them: {' '.join(str(exc).split())}"
        ) from exc
    return TrainerParts(
        trainer, checkpointer, stop, model_config, adapter_extra, ckpt_path, resumed_from
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


def _fit(ctx: RunContext, parts: TrainerParts, module, datamodule) -> dict[str, Any]:
    """Fit (resuming when asked; the last epoch is validated inside the fit, see
    `ValidationSchedule`), then write the results."""
    tc, run, trainer = ctx.cfg.train, ctx.run, parts.trainer
    if tc.sync_batchnorm and trainer.world_size > 1 and uses_cuda(tc.accelerator):
        _log(f"SyncBatchNorm: {convert_sync_bn(module.model)} trainable BatchNorm layer(s)")
    if ctx.resume:
        _log(
            f"resuming from {run.last_ckpt} (step {parts.resumed_from})"
            if parts.ckpt_path
            else f"{run.last_ckpt} not found: starting over"
        )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=parts.ckpt_path, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException, or its exit after a KeyboardInterrupt
        if parts.stop.signum is None:
            raise
        raise parts.stop.stopped(run.path, trainer.global_step, _rank() == 0) from None

    epochs_done, global_step = _reload_final_state(module, run.last_ckpt)
    if module.last_validated_epoch != epochs_done:  # a run whose last epoch was not validated
        module.final_validation = True  # (written before validation moved into the fit)
        trainer.validate(module, datamodule=datamodule, verbose=False)  # writes adapter/ if best
        module.final_validation = False
        module.absorb_logged_validation(trainer.callback_metrics, epochs_done)
    summary = _summary(ctx, module, datamodule, trainer, epochs_done, global_step, parts)
    if trainer.is_global_zero:
        _write_results(run, module, parts, summary)
    return summary


def _summary(ctx, module, datamodule, trainer, epochs_done, global_step, parts) -> dict:
    return {
        "run_dir": str(ctx.run.path),
        "wall_time_s": round(time.time() - ctx.started, 2),
        "resumed": parts.resumed_from is not None,
        "resumed_from_step": parts.resumed_from,
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


def _write_results(run: RunDir, module, parts: TrainerParts, summary: dict) -> None:
    """adapter_last/, adapter/ (when no validation ever wrote one) and train_summary.json."""
    model = module.model
    write_adapter(
        model,
        run.adapter_last,
        parts.model_config,
        parts.adapter_extra(module),
        parts.checkpointer.backbone_sha256(model),
    )
    if not (run.adapter / "adapter_config.json").is_file():
        tmp = run.path / f".tmp-{os.getpid()}-{run.adapter.name}"
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
