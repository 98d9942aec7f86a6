"""The arrows between a volume and its slices, in one place.

    volume (B, C, D, H, W)  --fold_slices-->    slices (B*D, C, H, W)
    slices (B*D, K, H, W)   --unfold_slices-->  volume (B, K, D, H, W)
    grid (B*D, h, w, C)     --grid_to_volume--> volume (B, C, D, h, w)   (inserted modules mix
    volume (B, C, D, h, w)  --volume_to_grid--> grid (B*D, h, w, C)       across slices here)

Slices are slice-major within each volume (`n = b * D + d`). `SliceContext` carries B and D
through one forward pass so that a module seeing `(B*D, ...)` can unfold it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SliceContext:
    """What a method needs to know about the current forward pass."""

    batch: int
    """B, the number of volumes."""
    depth: int
    """D, slices per volume (N = B * D)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared by the inserted modules during one forward pass."""


def fold_slices(x: torch.Tensor) -> torch.Tensor:
    """Volume `(B, C, D, H, W)` -> slices `(B*D, C, H, W)` (slice-major within each volume)."""
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)


def unfold_slices(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Slices `(B*D, K, H, W)` -> volume `(B, K, D, H, W)`."""
    n, k, h, w = x.shape
    return x.reshape(batch, n // batch, k, h, w).permute(0, 2, 1, 3, 4)


def grid_to_volume(grid: torch.Tensor, batch: int) -> torch.Tensor:
    """Channels-last slice grid `(B*D, h, w, C)` -> volume `(B, C, D, h, w)`."""
    n, h, w, c = grid.shape
    return grid.reshape(batch, n // batch, h, w, c).permute(0, 4, 1, 2, 3)


def volume_to_grid(vol: torch.Tensor) -> torch.Tensor:
    """Volume `(B, C, D, h, w)` -> channels-last slice grid `(B*D, h, w, C)`."""
    b, c, d, h, w = vol.shape
    return vol.permute(0, 2, 3, 4, 1).reshape(b * d, h, w, c)
