"""`medtune params`: total / tuned / inserted parameter counts of one config or a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtune.core.errors import MedtuneInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="parameter counts (total, tuned, inserted) of a config, built without weights",
        description="Build the model of a config without weights (on PyTorch's meta device: "
        "nothing is allocated, downloaded or read) and print its total, tuned and inserted "
        "parameter counts.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, help="one config YAML")
    g.add_argument("--all", type=Path, metavar="DIR", help="every config YAML under DIR")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.set_defaults(func=run)


def _count(path: Path) -> tuple[str, object]:
    """(method name, parameter counts) of a config; the model is built on the meta device
    (shapes only: no memory, no random initialisation, nothing read or downloaded)."""
    import torch

    from medtune.modeling.model import build_model
    from medtune.modeling.params import count_parameters
    from medtune.training.config import load_config

    cfg = load_config(path)
    try:
        with torch.device("meta"):  # shapes only: the counts without allocating or initialising
            model = build_model(cfg.model, load_weights=False)
    except MedtuneInputError as exc:
        raise MedtuneInputError(f"{path}: {exc}") from exc
    return cfg.model.method["name"], count_parameters(model)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        _, counts = _count(args.config)
        if args.json:
            print(json.dumps(counts.as_dict()))
        else:
            print(f"config   {args.config}")
            print(f"total    {counts.total:>12,d}  ({counts.total / 1e6:.3f} M)")
            print(
                f"tuned    {counts.tuned:>12,d}  ({counts.tuned / 1e6:.3f} M, {counts.tuned_pct:.2f} %)"
            )
            print(f"inserted {counts.inserted:>12,d}  ({counts.inserted / 1e6:.3f} M)")
        return 0
    root: Path = args.all
    if not root.is_dir():
        raise MedtuneInputError(
            f"--all {root}: expected a folder of config YAML files, found no such folder"
        )
    paths = sorted(p for p in root.rglob("*.yaml") if p.is_file())
    if not paths:
        raise MedtuneInputError(f"--all {root}: no .yaml config files found")
    rows = []
    for path in paths:
        method, c = _count(path)
        rows.append({"config": str(path), "method": method, **c.as_dict()})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| config | method | total (M) | tuned (M) | inserted (M) | tuned % |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        pct = 100.0 * r["tuned"] / r["total"]
        print(
            f"| {r['config']} | {r['method']} | {r['total'] / 1e6:.3f} | {r['tuned'] / 1e6:.3f} "
            f"| {r['inserted'] / 1e6:.3f} | {pct:.2f} |"
        )
    return 0
