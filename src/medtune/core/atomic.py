"""Atomic file writes: write under a temporary name in the same folder, then rename.

A killed process therefore leaves either the old file or the new one, never half a file; the
temporary names (`.tmp-<pid>-<name>`, keeping the name's ending so that writers which pick a
format from it still work) are what `medtune.training.checkpoint.clean_temporary` removes.
Every file written gets the mode a plain `open(path, "w")` would give (0666 less the umask),
whatever the writer used for its temporary file (safetensors writes 0600).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """The temporary sibling of `path` used while writing it."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


@functools.cache
def _file_mode() -> int:
    """0666 less the process umask: the mode of a file made by a plain `open()` (read once; the
    umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to write the file, then rename `tmp` to `path`; returns `path`.

    The parent folder is created; a failed write removes the temporary file. A regular file gets
    the mode of a plain `open()` (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if stat.S_ISREG(os.lstat(tmp).st_mode):
            os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8, flushed to disk) atomically; returns `path`."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)
