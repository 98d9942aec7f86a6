"""`medtune demo`: the offline demo on BraTS-like phantoms (see medtune.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: Med-Tuning vs head-only vs full fine-tuning on phantoms",
        description="Make BraTS-like phantoms, fine-tune a frozen ImageNet EfficientNet-Lite0 with "
        "Med-Adapters and, on the same budget, head-only and full fine-tuning; evaluate them on "
        "held-out phantoms beside an Otsu baseline; predict one case; write OUT/report.md with "
        "a table and two PNG figures. No network needed.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo_out"),
        metavar="DIR",
        help="output folder (default demo_out)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes (about 2 minutes); same outputs"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtune.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0
