"""`medtune train`: fine-tune a config on a dataset into a run directory (docs/training.md).

    medtune train --config CFG [--data DIR] [--fold K] [--out RUN_DIR] [dotted overrides]
    medtune train --resume RUN_DIR [dotted overrides, e.g. --train.max_epochs 300]

The summary line goes to stdout; progress bars and notes go to stderr.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from medtune.core.configbase import parse_override_value
from medtune.core.errors import MedtuneInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a config on a dataset (Lightning; resumable; DDP)",
        description="Train the model of a config on a dataset into a run directory holding the "
        "resolved config, adapter-only folders (adapter/ = best validation Dice, adapter_last/), "
        "the trainer state for --resume, logs and train_summary.json. Any config field can be "
        "overridden with a dotted flag, e.g. --train.max_epochs 5 --data.batch_size 1 "
        "--train.devices 2 --train.strategy ddp.",
    )
    p.add_argument("--config", type=Path, help="experiment config YAML (not needed with --resume)")
    p.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (sets data.root)")
    p.add_argument("--fold", type=int, metavar="K", help="validation fold (sets data.fold)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="RUN_DIR",
        help="run directory to create (default runs/<config name>/fold<K>)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last complete checkpoint",
    )
    p.set_defaults(func=run_train, accepts_overrides=True)


def _default_out(name: str, config: Path | None, fold: int) -> Path:
    stem = name or (config.stem if config else "run")
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) / f"fold{fold}"


def parse_cli_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--train.max_epochs", "5", "--data.fold=1"]` -> `{"train.max_epochs": 5, "data.fold": 1}`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=")[0]:
            raise MedtuneInputError(
                f"unrecognised argument '{tok}'; config overrides look like --train.max_epochs 5"
            )
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise MedtuneInputError(f"override {tok} has no value")
            value = tokens[i + 1]
            i += 2
        out[key] = parse_override_value(value)
    return out


def _check_arguments(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """Check the arguments and files that need no heavy imports (torch, Lightning, timm take
    seconds to load): the config file, --data, --out / --resume."""
    from medtune.artifacts.run_dir import RunDir
    from medtune.core.configbase import load_yaml

    if args.resume is not None:
        if args.config is not None:
            raise MedtuneInputError(
                f"--config {args.config} with --resume {args.resume}: a resumed run uses its own "
                "config.yaml; pass only overrides (e.g. --train.max_epochs 300)"
            )
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise MedtuneInputError(
                f"--out {args.out} with --resume {args.resume}: a resumed run writes into RUN_DIR"
            )
        out = args.resume
    else:
        if args.config is None:
            raise MedtuneInputError("--config CFG is required (or --resume RUN_DIR)")
        raw = load_yaml(args.config)
        name = overrides.get("name", raw.get("name"))
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        fold = overrides.get("data.fold", data.get("fold", 0))
        out = args.out or _default_out(
            name if isinstance(name, str) else "", args.config, fold if isinstance(fold, int) else 0
        )
    if args.data is not None and not args.data.is_dir():
        raise MedtuneInputError(
            f"--data {args.data}: expected a dataset folder, found no such folder"
        )
    if _launched_rank() == 0:  # the other processes of a DDP run find rank 0's folder
        RunDir(out).check_start(resume=args.resume is not None)


def _launched_rank() -> int:
    """This process's rank from the launcher's environment (the variables Lightning reads)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key, "")
        if value.strip().isdigit():
            return int(value)
    return 0


def run_train(args: argparse.Namespace) -> int:
    overrides = parse_cli_overrides(getattr(args, "overrides", []) or [])
    if args.data is not None:
        overrides["data.root"] = str(args.data)
    if args.fold is not None:
        overrides["data.fold"] = args.fold
    _check_arguments(args, overrides)

    from medtune.training.config import load_config
    from medtune.training.run import is_global_zero, load_run_config, summary_line, train_run

    if args.resume is not None:
        cfg = load_run_config(args.resume, overrides)
        summary = train_run(cfg, args.resume, resume=True)
    else:
        cfg = load_config(args.config, overrides)
        out = args.out or _default_out(cfg.name, args.config, cfg.data.fold)
        summary = train_run(cfg, out, resume=False)
    if is_global_zero():
        print(summary_line(summary))
    return 0
