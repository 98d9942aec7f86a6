"""Parameter accounting: total, tuned (requires_grad) and inserted (added by the method)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCounts:
    """total: every parameter as built; tuned: requires_grad; inserted: added by the method."""

    total: int
    tuned: int
    inserted: int

    @property
    def tuned_pct(self) -> float:
        """Tuned parameters as a percentage of the total."""
        return 100.0 * self.tuned / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "tuned": self.tuned, "inserted": self.inserted}


def count_parameters(model: nn.Module) -> ParamCounts:
    """Counts for a built `SegModel` (shared parameters are counted once)."""
    seen: set[int] = set()
    total = tuned = inserted = 0
    inserted_names = set(getattr(model, "inserted_names", []))
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            tuned += p.numel()
        if name in inserted_names:
            inserted += p.numel()
    return ParamCounts(total, tuned, inserted)
