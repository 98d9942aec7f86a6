"""An adapter whose backbone no longer matches: the error says what differs, not "no seed"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medtune.core.errors import MedtuneInputError
from medtune.inference.predictor import load_predictor


def _edited_adapter(tiny_run: Path, tmp_path: Path, edit, seed: int | None = 7) -> Path:
    """A copy of the tiny run's adapter folder (outside any run directory) with `edit`
    applied to its adapter_config.json; `seed` recorded in its extra unless None."""
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run / "adapter", adapter)
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    if seed is not None:
        cfg["extra"]["seed"] = seed
    edit(cfg)
    path.write_text(json.dumps(cfg))
    return adapter


def test_unchanged_adapter_loads(tiny_run, tmp_path):
    assert load_predictor(_edited_adapter(tiny_run, tmp_path, lambda c: None)).model is not None


def test_a_changed_backbone_field_is_named(tiny_run, tmp_path):
    def edit(cfg):
        cfg["model"]["backbone"]["in_chans"] = 1

    with pytest.raises(MedtuneInputError) as exc:
        load_predictor(_edited_adapter(tiny_run, tmp_path, edit))
    msg = str(exc.value)
    assert "model.backbone.in_chans is 1, the adapter was trained with 4" in msg
    assert "seed" not in msg


def test_a_changed_architecture_with_the_seed_present_does_not_blame_the_seed(tiny_run, tmp_path):
    def edit(cfg):
        cfg["model"]["backbone"]["timm_kwargs"]["mlp_ratio"] = 2.0  # other frozen MLP weights

    with pytest.raises(MedtuneInputError) as exc:
        load_predictor(_edited_adapter(tiny_run, tmp_path, edit))
    msg = str(exc.value)
    assert "rebuilt with seed 7 (extra['seed'])" in msg and "model.backbone" in msg
    assert "expected the run directory" not in msg  # the seed is not missing


def test_a_missing_seed_is_still_reported_as_such(tiny_run, tmp_path):
    adapter = _edited_adapter(tiny_run, tmp_path, lambda c: c["extra"].pop("seed", None), None)
    with pytest.raises(MedtuneInputError, match="an adapter whose extra has 'seed'"):
        load_predictor(adapter)
