"""Time ratio of two configs' training steps, measured alternately in one process.

    python benchmarks/step_ratio.py --config configs/brats/vit_b16_upernet/med_adapter.yaml \
        --compare configs/brats/vit_b16_upernet/head.yaml --crop 32 32 32 --steps 5

Builds both models without weights (random init, nothing downloaded) and runs full training
steps on the CPU (forward, the config's loss `train.loss`, backward, the config's Adam step from
`medtune.training.optim.make_adam`)
on one fixed random crop, A and B alternating after --warmup steps of each, so that machine
load hits both alike. Prints each config's median step time and the ratio A / B.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from medtune.modeling.model import build_model  # noqa: E402
from medtune.training.config import load_config  # noqa: E402
from medtune.training.losses import SegLoss  # noqa: E402
from medtune.training.optim import make_adam  # noqa: E402


def make_step(config: Path, crop: tuple[int, int, int], batch: int) -> Callable[[], float]:
    """A closure running one training step of `config`'s model; returns its wall time (s)."""
    cfg = load_config(config)
    cfg.model.backbone.img_size = crop[1]
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False).train()
    opt = make_adam([p for p in model.parameters() if p.requires_grad], cfg.train)
    loss_fn = SegLoss(cfg.train.loss)
    x = torch.randn(batch, model.in_chans, *crop)
    y = torch.randint(0, model.num_classes, (batch, 1, *crop))

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, type=Path, help="A: the config timed")
    ap.add_argument("--compare", required=True, type=Path, help="B: the reference config")
    ap.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), default=(32, 32, 32))
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    crop = tuple(args.crop)
    step_a = make_step(args.config, crop, args.batch)
    step_b = make_step(args.compare, crop, args.batch)
    for _ in range(args.warmup):
        step_a()
        step_b()
    times_a, times_b = [], []
    for _ in range(args.steps):
        times_a.append(step_a())
        times_b.append(step_b())
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    print(f"A {args.config}: median {med_a:.4f} s/step over {args.steps}")
    print(f"B {args.compare}: median {med_b:.4f} s/step over {args.steps}")
    print(f"ratio A/B: {med_a / med_b:.3f} (crop {list(crop)}, batch {args.batch}, fp32, CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
