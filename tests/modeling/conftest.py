"""Fixtures for the core tests: tiny models of each family (from `tests/tiny.py`)."""

from __future__ import annotations

import pytest

from tiny import seeded_build, tiny_model_config


@pytest.fixture
def make_model():
    def _make(family: str, method: dict | str = "med_adapter", *, classes: int = 3, **kw):
        return seeded_build(tiny_model_config(family, method, num_classes=classes, **kw))

    return _make
