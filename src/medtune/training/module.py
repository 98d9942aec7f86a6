"""The Lightning module: paper recipe around a `SegModel`.

- optimiser: Adam (AMSGrad) with weight decay over the trainable parameters only, fused where
  PyTorch allows (`medtune.training.optim`, `train.optimizer_impl`);
- schedule: linear warm-up then cosine decay to 0, stepped every optimiser step;
- loss: soft Dice on the softmax summed over the foreground classes (MONAI `DiceLoss`), or that
  plus cross-entropy (`dice_ce`);
- a non-finite loss stops training (one line naming the epoch and the batch) before anything
  it reached is written, so the last checkpoint stays resumable: the losses are checked on the
  host every `log_every_n_steps` batches (when Lightning reads them for logging anyway), before
  every checkpoint, validation and adapter write, and at the end of the epoch, never with a
  host synchronisation of its own in every step (`log_every_n_steps: 1` checks every batch
  before its update);
- opt-in speed and memory switches: `train.compile` (`torch.compile` of the model's forward,
  in place so parameter names do not change) and `train.activation_checkpointing` (the
  backbone recomputes its blocks in the backward pass, `Backbone.set_activation_checkpointing`);
- validation: sliding-window inference (`medtune.evaluation.predict_volume`) over whole
  validation volumes, Dice per region of the dataset, averaged over cases and processes.

Checkpoints hold only what training changes (trainable parameters and buffers; the frozen
backbone too when it was not loaded from pre-trained weights), the optimiser, scheduler and
loop state, and the RNG states, restored right before the first step after a resume.
"""

from __future__ import annotations

import math
import random
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from medtune.core.errors import MedtuneInputError
from medtune.evaluation.metrics import region_dice
from medtune.modeling.model import SegModel
from medtune.training.config import TrainConfig
from medtune.training.datamodule import ResumableLoader
from medtune.training.losses import SegLoss
from medtune.training.optim import make_adam, retarget_state
from medtune.training.switches import (
    apply_activation_checkpointing,
    apply_channels_last,
    apply_compile,
    apply_frozen_batchnorm_fold,
)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor at optimiser step `step`: linear warm-up over `warmup` steps, cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def effective_warmup_epochs(cfg: TrainConfig) -> int:
    """`cfg.warmup_epochs`, or a fifth of the run when it would not leave any decay."""
    if cfg.warmup_epochs >= cfg.max_epochs:
        return cfg.max_epochs // 5
    return cfg.warmup_epochs


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SegTrainModule(pl.LightningModule):
    """Trains a `SegModel` on crops `(B, C, D, H, W)`; validates on whole volumes.

    Args:
        model: the model as built by `build_model` (method applied, `requires_grad` set).
        cfg: the train section of the experiment config.
        crop_size: training window `(D, H, W)`, also the sliding window of validation.
        regions: region name -> label values (from the dataset), for validation Dice.
        save_frozen: also checkpoint frozen parameters (the backbone was randomly initialised).
    """

    def __init__(
        self,
        model: SegModel,
        cfg: TrainConfig,
        crop_size: tuple[int, int, int],
        regions: dict[str, list[int]],
        save_frozen: bool = False,
    ):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.crop_size = tuple(int(c) for c in crop_size)
        self.regions = {k: [int(v) for v in vs] for k, vs in regions.items()}
        self.loss_fn = SegLoss(cfg.loss)
        self.strict_loading = False  # checkpoints hold only what training changes
        params = {
            f"model.{n}" for n, p in model.named_parameters() if p.requires_grad or save_frozen
        }
        # Persistent buffers only: non-persistent ones (Swin's attention masks and relative
        # position indices) are rebuilt with the model and never appear in a state dict.
        saved = {f"model.{k}" for k in model.state_dict(keep_vars=True)}
        buffers = {f"model.{n}" for n, _ in model.named_buffers()} & saved
        self._ckpt_keys = params | buffers
        self.best: dict[str, Any] = {"mean_dice": -1.0, "epoch": 0, "regions": {}}
        self.history: list[dict[str, Any]] = []
        """One entry per epoch: {"epoch", "train_loss", and "val_mean_dice"... when validated}."""
        self.new_best = False
        self.final_validation = False
        self._pending_rng: dict[str, Any] | None = None
        self._val_sum: torch.Tensor | None = None
        self._epoch_loss = [0.0, 0]
        self._unchecked: list[tuple[int, int, int, torch.Tensor]] = []
        """(epoch, batch, optimiser step, loss) of the batches whose loss is not checked yet."""
        trial = torch.randn(
            (1, model.in_chans, *self.crop_size), generator=torch.Generator().manual_seed(0)
        )
        self.fold_note = apply_frozen_batchnorm_fold(model, cfg, trial)
        apply_activation_checkpointing(model, cfg)

    def on_train_start(self) -> None:
        # on the device, after a resumed checkpoint is restored (a load keeps the layout)
        apply_channels_last(self.model, self.cfg, self.device)

    def configure_model(self) -> None:
        apply_compile(self.model, self.cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Volume `(B, C, D, H, W)` -> logits `(B, K, D, H, W)`."""
        return self.model(x)

    # --- training ------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        loader = self.trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.mark(self.current_epoch, batch_idx + 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        logits = self.model(image)
        loss = self.loss_fn(logits, label[:, None])
        self._unchecked.append(
            (self.current_epoch, batch_idx, self.global_step, loss.detach().float())
        )
        if len(self._unchecked) >= self.cfg.log_every_n_steps:
            self.check_finite_losses()  # Lightning reads the logged loss at this step anyway
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=image.shape[0])
        # a device tensor: no host sync per step; read once per epoch (and per checkpoint)
        self._epoch_loss[0] = self._epoch_loss[0] + loss.detach()
        self._epoch_loss[1] += 1
        return loss

    def check_finite_losses(self) -> None:
        """Raise at the first non-finite loss among the batches not checked yet (one host sync
        for all of them; every process decides together, so none waits in a collective).

        Called every `log_every_n_steps` batches before the batch's update, and before anything
        is written (checkpoints, validation and its adapter, the epoch's end): a bad loss never
        reaches a file, though up to `log_every_n_steps - 1` updates after it reached the
        weights in memory.
        """
        pending, self._unchecked = self._unchecked, []
        if not pending:
            bad = None
        else:
            finite = torch.isfinite(torch.stack([p[3] for p in pending])).tolist()
            bad = next((p for p, ok in zip(pending, finite) if not ok), None)
        local, trainer = bad is None, self._trainer
        ok = local
        if trainer is not None and trainer.world_size > 1:
            ok = trainer.strategy.reduce_boolean_decision(local, all=True)
        if ok:
            return
        if bad is None:
            epoch, batch_idx, step = self.current_epoch, 0, self.global_step
            found = "a non-finite loss in another process"
        else:
            epoch, batch_idx, step, value = bad
            found = float(value)
        raise MedtuneInputError(
            f"train: expected a finite loss, found {found} at epoch {epoch + 1}, batch "
            f"{batch_idx + 1} (optimiser step {step + 1}); stopped before anything it reached "
            "was written, so the run's last checkpoint and adapter/ are intact: lower train.lr "
            "or use train.precision 32-true, then continue with medtune train --resume RUN_DIR"
        )

    def on_validation_start(self) -> None:
        self.check_finite_losses()  # validation may write adapter/

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = [0.0, 0]

    def on_train_epoch_end(self) -> None:
        self.check_finite_losses()
        total, n = self._epoch_loss
        t = torch.tensor([float(total), float(n)], dtype=torch.float64, device=self.device)
        t = self.trainer.strategy.reduce(t, reduce_op="sum")
        mean = float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")
        self.log("train/epoch_loss", mean, sync_dist=False)
        self.history_entry(self.current_epoch + 1)["train_loss"] = mean

    def configure_optimizers(self) -> dict[str, Any]:
        opt = make_adam([p for p in self.model.parameters() if p.requires_grad], self.cfg)
        # Not `trainer.estimated_stepping_batches`: it builds the training loader before a
        # checkpoint's loop state is restored, and the loader would then miss its resume state.
        per_epoch = self.trainer.datamodule.optimizer_steps_per_epoch()
        total = max(1, per_epoch * self.trainer.max_epochs)
        warmup = effective_warmup_epochs(self.cfg) * per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(warmup_cosine, warmup=warmup, total=total)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation ----------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        if self.trainer is not None and not self.trainer.training:
            return batch  # whole volumes stay on the CPU; windows go to the device
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros(len(self.regions) + 1, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from medtune.inference.sliding_window import predict_volume, probs_to_labels

        probs = predict_volume(
            self.model,
            batch["image"][0],
            window=self.crop_size,
            overlap=self.cfg.sw_overlap,
            sw_batch_size=self.cfg.sw_batch_size,
            device=self.device,
            stitch_device="cpu",
            num_classes=self.model.num_classes,
        )
        pred = probs_to_labels(probs)
        dice = region_dice(pred, batch["label"][0].numpy(), self.regions)
        w = float(batch["weight"][0])
        assert self._val_sum is not None
        self._val_sum += torch.tensor([*(w * d for d in dice), w], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        assert self._val_sum is not None
        t = self.trainer.strategy.reduce(self._val_sum.to(self.device), reduce_op="sum").cpu()
        if float(t[-1]) <= 0:
            return
        per_region = {r: float(v) for r, v in zip(self.regions, (t[:-1] / t[-1]).tolist())}
        mean = float(np.mean(list(per_region.values())))
        epoch = self.current_epoch + (0 if self.final_validation else 1)
        for r, v in per_region.items():
            self.log(f"val/dice_{r}", v, sync_dist=False)
        self.log("val/mean_dice", mean, prog_bar=True, sync_dist=False)
        self.record_validation(epoch, per_region)

    # --- history -------------------------------------------------------------------------
    def history_entry(self, epoch: int) -> dict[str, Any]:
        """The history entry of `epoch` (1-based), created when missing."""
        entry = next((h for h in self.history if h["epoch"] == epoch), None)
        if entry is None:
            entry = {"epoch": epoch}
            self.history.append(entry)
        return entry

    def record_validation(self, epoch: int, per_region: dict[str, float]) -> None:
        """Record the validation Dice of `epoch` and whether it is a new best."""
        mean = float(np.mean(list(per_region.values())))
        entry = self.history_entry(epoch)
        entry["val_mean_dice"] = mean
        entry["val_dice"] = dict(per_region)
        self.new_best = mean > self.best["mean_dice"]
        if self.new_best:
            self.best = {"mean_dice": mean, "epoch": epoch, "regions": dict(per_region)}

    def absorb_logged_validation(self, metrics: dict[str, Any], epoch: int) -> None:
        """Record a validation that ran in other processes (`ddp_spawn`) from the metrics it
        logged (`trainer.callback_metrics`), unless `epoch` is already validated here."""
        if self.last_validated_epoch == epoch or "val/mean_dice" not in metrics:
            return
        self.record_validation(epoch, {r: float(metrics[f"val/dice_{r}"]) for r in self.regions})

    @property
    def last_validated_epoch(self) -> int:
        """The last epoch (1-based) whose end was validated, 0 if none."""
        return max((h["epoch"] for h in self.history if "val_mean_dice" in h), default=0)

    # --- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite_losses()  # every process saves together (rank 0 writes)
        sd = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in sd.items() if k in self._ckpt_keys}
        checkpoint["medtune"] = {
            "rng": _rng_state(),
            "best": self.best,
            "history": self.history,
            "epoch_loss": [float(self._epoch_loss[0]), self._epoch_loss[1]],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = sorted(self._ckpt_keys - set(checkpoint.get("state_dict", {})))
        if missing or "medtune" not in checkpoint:
            raise MedtuneInputError(
                f"trainer checkpoint: expected the tensors of this model and medtune state, "
                f"found {len(missing)} missing (e.g. {missing[:3]}); was it written by another config?"
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        for opt_state in checkpoint.get("optimizer_states", []):
            retarget_state(opt_state, params, self.cfg.optimizer_impl)  # restored after this hook
        state = checkpoint["medtune"]
        self.best = state["best"]
        self.history = state["history"]
        self._epoch_loss = list(state.get("epoch_loss", [0.0, 0]))
        self._pending_rng = state["rng"]
