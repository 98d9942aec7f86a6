"""Fixtures of the inference tests: BraTS-like phantoms and a tiny run directory built by hand
(as `medtune train` lays it out). Helpers live in infer_helpers.py."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import SHAPE, run_config

from medtune.artifacts.adapters import save_adapter
from medtune.core.configbase import dump_yaml, to_dict
from medtune.data.phantoms import write_phantoms
from medtune.data.preprocess import ensure_cache, read_props
from medtune.modeling.model import build_model
from medtune.training.config import config_from_dict


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    """3 BraTS-like phantoms (labels 0..3, ET 3 stored as 4 in the source convention)."""
    return write_phantoms(
        "brats", 3, tmp_path_factory.mktemp("inference") / "ds", seed=3, shape=SHAPE
    )


@pytest.fixture(scope="session")
def tiny_run(phantom_data, tmp_path_factory) -> Path:
    """A run directory as `medtune train` writes it: config.yaml + adapter/ (untrained
    Med-Adapter on a random tiny ViT, seeded with train.seed as training does)."""
    cache = ensure_cache(phantom_data)
    props = read_props(cache)
    run = tmp_path_factory.mktemp("inference") / "run"
    run.mkdir()
    cfg = config_from_dict(run_config(phantom_data, cache))
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(cfg.model, load_weights=False)
    extra = {
        "dataset": props.to_dict(),
        "crop_size": list(cfg.data.crop_size),
        "sw_overlap": cfg.train.sw_overlap,
    }
    save_adapter(model, run / "adapter", to_dict(cfg.model), extra=extra)
    dump_yaml(to_dict(cfg), run / "config.yaml")
    return run
