"""The `medtune` console command: one entry point, one module per group of subcommands.

Each module listed in `COMMAND_MODULES` defines `register(subparsers)`, which adds its
subcommands with `set_defaults(func=...)`. Conventions (see docs/cli.md): results on stdout,
logs and progress on stderr; exit 0 on success, 2 on bad input (one line naming the file or
value), 1 on anything else.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from medtune import __version__
from medtune.core.errors import MedtuneInputError, TrainingInterrupted

COMMAND_MODULES = [
    "medtune.cli.params",
    "medtune.cli.data_cmds",
    "medtune.cli.run_cmds",
    "medtune.cli.infer_cmds",
    "medtune.cli.eval_folder_cmd",
    "medtune.cli.demo_cmd",
    "medtune.cli.bench_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="medtune",
        description="Parameter-efficient tuning of 2D backbones for 3D medical segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"medtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra
    try:
        code = args.func(args)
    except MedtuneInputError as exc:
        _say(f"medtune {args.command}: error: {exc}")
        return 2
    except TrainingInterrupted as exc:
        if exc.show:
            _say(f"medtune {args.command}: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say(f"medtune {args.command}: interrupted")
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"medtune {args.command}: error: {exc.strerror}{where}")
        return 1
    return int(code or 0)


def _say(line: str) -> None:
    """Print one line on stderr, first closing progress bars still open there (so that the line
    does not land on a bar's line)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()
    print(line, file=sys.stderr, flush=True)


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
