"""Shared fixtures of the data-layer tests: tiny phantom datasets and their caches."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from medtune.data.phantoms import write_phantoms
from medtune.data.preprocess import preprocess_dataset

SHAPE = (32, 48, 48)  # (D, H, W)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def tree_hash():
    """A hash of a folder's file names and bytes: equal before and after means nothing written."""
    return _tree_hash


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory) -> Path:
    """4 BraTS-like phantom cases (read-only: copy before breaking)."""
    return write_phantoms("brats", 4, tmp_path_factory.mktemp("brats") / "ds", seed=3, shape=SHAPE)


@pytest.fixture(scope="session")
def kits_root(tmp_path_factory) -> Path:
    """3 KiTS-like phantom cases (read-only)."""
    return write_phantoms("kits", 3, tmp_path_factory.mktemp("kits") / "ds", seed=5, shape=SHAPE)


@pytest.fixture(scope="session")
def brats_cache(brats_root, tmp_path_factory) -> Path:
    return preprocess_dataset(brats_root, tmp_path_factory.mktemp("brats_cache") / "cache")


@pytest.fixture()
def brats_copy(brats_root, tmp_path) -> Path:
    """A private copy of the BraTS phantom dataset that a test may modify."""
    return Path(shutil.copytree(brats_root, tmp_path / "copy"))
