"""The run-folder layout: every file name a run directory holds, in one place.

    RUN_DIR/run.json                 format version, medtune version (from format 1 on)
    RUN_DIR/config.yaml              resolved experiment config (every default filled in)
    RUN_DIR/adapter/                 best adapter-only folder (by validation mean Dice)
    RUN_DIR/adapter_last/            adapter-only folder of the last epoch
    RUN_DIR/trainer_state/last.ckpt  Lightning checkpoint for resuming (local, torch format)
    RUN_DIR/logs/                    metrics.csv (and TensorBoard events when installed)
    RUN_DIR/train_summary.json       wall time, peak memory, parameter counts, best metric...
    RUN_DIR/eval_<split>_fold<K>/    reports of `medtune evaluate` (eval_test/: the test cases)

Runs written before `run.json` existed are format 1 and load as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.core.errors import MedtuneInputError

RUN_FORMAT = "medtune-run"
RUN_FORMAT_VERSION = 1
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train_summary.json"
ADAPTER_DIR = "adapter"
ADAPTER_LAST_DIR = "adapter_last"
STATE_DIR = "trainer_state"
LAST_CKPT = "last.ckpt"
LOGS_DIR = "logs"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created by building it)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def adapter_last(self) -> Path:
        return self.path / ADAPTER_LAST_DIR

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def last_ckpt(self) -> Path:
        return self.path / STATE_DIR / LAST_CKPT

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    def eval_dir(self, split: str, fold: int | None) -> Path:
        """Default report folder of `medtune evaluate` (`eval_<split>` without a fold, e.g.
        the test cases)."""
        return self.path / (f"eval_{split}" if fold is None else f"eval_{split}_fold{fold}")

    def is_run(self) -> bool:
        """True when the folder holds a run's config."""
        return self.config.is_file()

    def check_start(self, resume: bool) -> None:
        """Refuse to start a new run in a non-empty folder, or to resume a folder that holds no
        run; writes nothing (the command line calls it before loading the heavy modules)."""
        if resume:
            if not self.is_run():
                raise MedtuneInputError(
                    f"--resume {self.path}: expected a run directory with {CONFIG_FILE}, found none"
                )
            self.format_version()
            return
        if self.path.exists() and not self.path.is_dir():
            raise MedtuneInputError(f"--out {self.path}: expected a folder, found a file")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise MedtuneInputError(
                f"--out {self.path}: the folder exists and is not empty; continue it with "
                f"--resume {self.path} or choose another --out"
            )

    def format_version(self) -> int:
        """The run's format (1 for runs written before `run.json` existed)."""
        if not self.run_file.is_file():
            return 1
        try:
            data = json.loads(self.run_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedtuneInputError(f"{self.run_file}: expected JSON, found {exc}") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if data.get("format") != RUN_FORMAT or not isinstance(version, int):
            raise MedtuneInputError(
                f"{self.run_file}: expected a medtune run file (format {RUN_FORMAT!r}), found {data!r}"
            )
        if version > RUN_FORMAT_VERSION:
            raise MedtuneInputError(
                f"{self.run_file}: run format {version} is newer than this medtune reads "
                f"({RUN_FORMAT_VERSION}); upgrade medtune"
            )
        return version

    def run_file_content(self) -> dict[str, Any]:
        """What `run.json` holds for a run written now."""
        from medtune import __version__

        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "medtune_version": __version__,
        }

    def read_summary(self) -> dict[str, Any]:
        """The `train_summary.json` of a finished run."""
        if not self.summary.is_file():
            raise MedtuneInputError(
                f"{self.summary}: expected a finished run's summary, found none"
            )
        return json.loads(self.summary.read_text())


def resolve_model_dir(path: str | Path) -> tuple[Path, RunDir | None]:
    """(adapter folder, run directory or None) of a run directory or an adapter folder."""
    from medtune.artifacts.adapters import CONFIG_NAME

    p = Path(path)
    if not p.exists():
        raise MedtuneInputError(
            f"{p}: expected a run directory or an adapter folder, found no such path"
        )
    if (p / CONFIG_NAME).is_file():
        parent = RunDir(p.parent)
        return p, parent if parent.is_run() else None
    run = RunDir(p)
    if (run.adapter / CONFIG_NAME).is_file():
        run.format_version()  # refuses a run of a newer format
        return run.adapter, run
    if run.is_run():
        raise MedtuneInputError(
            f"{run.adapter / CONFIG_NAME}: expected the adapter of a finished run, found none "
            "(has training written its first adapter yet?)"
        )
    raise MedtuneInputError(
        f"{p}: expected a run directory ({CONFIG_FILE} + {ADAPTER_DIR}/) or an adapter folder "
        f"({CONFIG_NAME}), found neither"
    )
