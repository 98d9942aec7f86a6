"""`python -m medtune ...` is the `medtune` command."""

from medtune.cli import entry

entry()
