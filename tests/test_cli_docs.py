"""docs/cli.md holds the current `-h` text of every subcommand.

Regenerate the page's help blocks after changing a command: `python tests/test_cli_docs.py`
(the prose between the blocks is kept).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BLOCK = re.compile(r"^## medtune (\S+)\n\n```\n(.*?)```\n", re.M | re.S)


def _help_texts() -> dict[str, str]:
    """Subcommand -> its `-h` text at 80 columns (what a terminal of that width prints)."""
    os.environ["COLUMNS"] = "80"
    from medtune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: p.format_help() for name, p in sub.choices.items()}


def test_cli_md_holds_every_commands_current_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    helps = _help_texts()
    documented = dict(BLOCK.findall(DOC.read_text()))
    assert sorted(documented) == sorted(helps), "docs/cli.md: a section per subcommand"
    stale = [name for name, text in helps.items() if documented[name] != text]
    assert not stale, f"docs/cli.md is out of date for {stale}: run python tests/test_cli_docs.py"


def _regenerate() -> None:
    helps = _help_texts()
    text = DOC.read_text()
    text = BLOCK.sub(lambda m: f"## medtune {m[1]}\n\n```\n{helps.get(m[1], m[2])}```\n", text)
    missing = sorted(set(helps) - set(dict(BLOCK.findall(text))))
    for name in missing:
        text = text.rstrip("\n") + f"\n\n## medtune {name}\n\n```\n{helps[name]}```\n"
    DOC.write_text(text)
    print(f"{DOC}: {len(helps)} commands ({', '.join(missing) or 'none'} added)", file=sys.stderr)


if __name__ == "__main__":
    _regenerate()
