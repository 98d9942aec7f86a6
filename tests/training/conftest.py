"""Fixtures of the training tests: a tiny BraTS-like phantom dataset and tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from medtune.data.phantoms import write_phantoms
from medtune.data.preprocess import ensure_cache
from tiny import PHANTOM_SHAPE, tiny_experiment


@pytest.fixture(scope="session")
def engine_data(tmp_path_factory) -> Path:
    """5 BraTS-like phantoms (4 train / 1 validation case in fold 0), cache already built."""
    root = write_phantoms(
        "brats", 5, tmp_path_factory.mktemp("engine") / "ds", seed=1, shape=PHANTOM_SHAPE
    )
    ensure_cache(root)
    return root


@pytest.fixture()
def make_config(engine_data, tmp_path):
    """`make_config(**dotted_overrides)` -> (config YAML path, ExperimentConfig) on the phantoms."""

    def _make(**overrides: Any):
        data, cfg = tiny_experiment(engine_data, **overrides)
        path = tmp_path / f"config_{len(list(tmp_path.glob('config_*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path, cfg

    return _make
