"""The training loss, without Lightning (so that `medtune.bench` times the same loss)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn


class SegLoss(nn.Module):
    """Logits `(B, K, D, H, W)` and labels `(B, 1, D, H, W)` -> scalar loss.

    Soft Dice per foreground class over the whole batch, summed over the classes (the paper);
    `dice_ce` adds the mean voxel cross-entropy.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.dice = DiceLoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=True, reduction="sum"
        )
        self.ce = nn.CrossEntropyLoss() if name == "dice_ce" else None

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.dice(logits, label)
        if self.ce is not None:
            loss = loss + self.ce(logits, label[:, 0])
        return loss
