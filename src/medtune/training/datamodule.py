"""Training and validation loaders for Lightning, resumable in mid-epoch.

Every training sample is a pure function of (seed, epoch, index) (see
`medtune.data.loaders.TrainCropDataset`), so the state of the training loader is just
`(epoch, batches already consumed in that epoch)`. `ResumableLoader` implements Lightning's
`state_dict` / `load_state_dict` protocol with that pair, so a run killed between two steps
restarts on the batch that follows its last checkpoint, with the same crops.

Under DDP each process takes every `world`-th sample of the epoch (`rank, rank + world, ...`),
and every `world`-th validation case; shares are padded to equal length so that every process
runs the same number of steps (padded validation cases carry weight 0).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medtune.data.config import DataConfig
from medtune.data.loaders import TrainCropDataset, VolumeDataset
from medtune.training.config import TrainConfig


class ResumableSampler(Sampler[int]):
    """This process's dataset indices `epoch * n + i` of one epoch, skipping `start` of them."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n = int(n)
        self.rank = int(rank)
        self.world = int(world)
        self.per_rank = math.ceil(self.n / self.world)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch; a new epoch starts at its beginning."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.start = 0

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        base = self.epoch * self.n
        share = [(self.rank + j * self.world) % self.n for j in range(self.per_rank)]
        return iter([base + i for i in share[self.start :]])


class ResumableLoader(DataLoader):
    """A `DataLoader` over a `ResumableSampler` whose state is (epoch, batches consumed).

    The training module calls `mark(epoch, batches_done)` before every step, so the state
    counts the batches that reached the model (not those the fetcher prefetched).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.position = (0, 0)

    def mark(self, epoch: int, batches_done: int) -> None:
        self.position = (int(epoch), int(batches_done))

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position
        if done >= len(self):  # the epoch is complete: the next one starts at its beginning
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        self.position = (epoch, done)
        self.sampler.epoch = epoch
        self.sampler.start = done * int(self.batch_size or 1)


class WeightedVolumes(Dataset):
    """Validation volumes of one process, padded by repetition; padded ones have weight 0.

    Items: {"image": (C, D, H, W) float32, "label": (D, H, W) int64, "case_id", "weight"}.
    """

    def __init__(self, cache: Path, case_ids: list[str], rank: int, world: int):
        self.volumes = VolumeDataset(cache, case_ids)
        n = len(case_ids)
        per_rank = math.ceil(n / world)
        self.items = [(rank + j * world) for j in range(per_rank)]
        self.n = n

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = self.items[i]
        item = self.volumes[k % self.n]
        item["weight"] = 1.0 if k < self.n else 0.0
        return item


def _collate_volume(batch: list[dict[str, Any]]) -> dict[str, Any]:
    b = batch[0]
    return {
        "image": b["image"][None],
        "label": b["label"][None],
        "case_id": [b["case_id"]],
        "weight": torch.tensor([b["weight"]]),
    }


def pin_memory_for(accelerator: str) -> bool:
    """Whether training batches go to page-locked memory: on CUDA (their copy to the GPU is then
    asynchronous, Lightning moves them with `non_blocking=True`), never on the CPU (where
    pinning only costs, and warns without a GPU)."""
    from medtune.training.setup import uses_cuda

    return uses_cuda(accelerator)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> ResumableLoader:
    """The training loader over `dataset` (indices `epoch * len + i`, this process's share):
    what training uses, and what `benchmarks/data_loading.py` times."""
    return ResumableLoader(
        dataset,
        ResumableSampler(len(dataset), rank, world),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=False,
        # A private generator: creating iterators never draws from the global RNG, so a
        # resumed run's global RNG stream (dropout) matches the uninterrupted run's.
        generator=torch.Generator().manual_seed(seed),
    )


def epoch_samples(data: DataConfig, train: TrainConfig, n_train_cases: int, world: int) -> int:
    """Training crops per epoch over all processes."""
    if train.steps_per_epoch is not None:
        return train.steps_per_epoch * train.accumulate_grad_batches * data.batch_size * world
    return int(data.samples_per_epoch or n_train_cases)


class SegDataModule(pl.LightningDataModule):
    """Random crops of the training cases and whole validation volumes from a cache."""

    def __init__(
        self,
        cache: Path,
        train_ids: list[str],
        val_ids: list[str],
        data: DataConfig,
        train: TrainConfig,
    ):
        super().__init__()
        self.cache = Path(cache)
        self.train_ids = list(train_ids)
        self.val_ids = list(val_ids)[: train.val_max_cases] if train.val_max_cases else val_ids
        self.data_cfg = data
        self.train_cfg = train

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def optimizer_steps_per_epoch(self) -> int:
        """Optimiser steps per epoch of each process (computed without building a loader)."""
        _, world = self._rank_world()
        n = epoch_samples(self.data_cfg, self.train_cfg, len(self.train_ids), world)
        batches = math.ceil(math.ceil(n / world) / self.data_cfg.batch_size)
        return math.ceil(batches / self.train_cfg.accumulate_grad_batches)

    def train_dataloader(self) -> ResumableLoader:
        rank, world = self._rank_world()
        n = epoch_samples(self.data_cfg, self.train_cfg, len(self.train_ids), world)
        cfg = dataclasses.replace(self.data_cfg, samples_per_epoch=n)
        ds = TrainCropDataset(self.cache, self.train_ids, cfg, seed=self.train_cfg.seed)
        pin = pin_memory_for(self.train_cfg.accelerator)
        return train_loader(
            ds, cfg.batch_size, cfg.num_workers, self.train_cfg.seed, rank, world, pin_memory=pin
        )

    def val_dataloader(self) -> DataLoader:
        # not pinned: whole volumes stay on the CPU, windows go to the device one batch at a time
        rank, world = self._rank_world()
        return DataLoader(
            WeightedVolumes(self.cache, self.val_ids, rank, world),
            batch_size=1,
            shuffle=False,
            num_workers=0,
            collate_fn=_collate_volume,
            generator=torch.Generator().manual_seed(self.train_cfg.seed),
        )
