"""`medtune bench`: training-step time, the floor, peak memory and inference time of a config.

The measurement lives in `medtune.bench`; this module only parses flags and prints. Progress
on stderr; stdout holds one JSON object (`--json`) or a Markdown table. See
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time a config's training step (and its floor), peak memory and inference",
        description=(
            "Build the config's model without weights and time, on one device: the training "
            "step (forward, the config's loss, backward, Adam) as median/min/max over --steps "
            "steps after --warmup; the floor (the bare frozen backbone over the same slices, "
            "forward + backward to its input, no adapters, no decoder) and a second method "
            "(--compare), both stepped alternately with it; peak memory (GPU: max allocated; "
            "CPU: peak RSS increase) of the first model; one window forward; and a whole "
            "random volume by sliding windows (the config's window and overlap), plainly and "
            "with flip8 TTA."
        ),
    )
    p.add_argument("--config", type=Path, required=True, metavar="CFG", help="config YAML")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default: cuda when available)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="train.precision 32-true or bf16-mixed (default: the config's; auto: bf16 on CUDA, "
        "fp32 on the CPU)",
    )
    p.add_argument(
        "--batch", type=int, metavar="N", help="volumes per step (default: the config's)"
    )
    p.add_argument(
        "--crop",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="training crop and inference window (default: the config's data.crop_size)",
    )
    p.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps (default 5)")
    p.add_argument(
        "--warmup", type=int, default=2, metavar="N", help="untimed steps first (default 2)"
    )
    p.add_argument(
        "--volume",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="whole volume (default: 155 240 240 on CUDA, 48 128 128 on the CPU, at least the "
        "window)",
    )
    p.add_argument(
        "--compare",
        default="head",
        metavar="METHOD",
        help="tuning method stepped alternately for step / METHOD step (default head; none: skip)",
    )
    p.add_argument("--no-tta", action="store_true", help="do not time the volume with flip8")
    p.add_argument(
        "--compile",
        action="store_true",
        help="set train.compile (torch.compile of the model, backend train.compile_backend)",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="set train.activation_checkpointing (the backbone recomputes its blocks in backward)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="also write bench.json and bench.md into DIR"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtune.bench import BenchOptions, bench_config, caption, markdown_table
    from medtune.core.atomic import atomic_write_text
    from medtune.training.config import load_config

    options = BenchOptions(
        device=args.device,
        precision=args.precision,
        batch=args.batch,
        crop=tuple(args.crop) if args.crop else None,
        steps=args.steps,
        warmup=args.warmup,
        volume=tuple(args.volume) if args.volume else None,
        compare=None if args.compare == "none" else args.compare,
        tta=not args.no_tta,
    )
    cfg = load_config(args.config)
    cfg.train.compile = cfg.train.compile or args.compile
    cfg.train.activation_checkpointing = (
        cfg.train.activation_checkpointing or args.activation_checkpointing
    )
    row = bench_config(cfg, options, name=str(args.config))
    table = markdown_table([row]) + "\n\n" + caption([row]) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "bench.json", json.dumps(row, indent=1) + "\n")
        atomic_write_text(args.out / "bench.md", table)
    print(json.dumps(row) if args.json else table, end="\n" if args.json else "")
    return 0
