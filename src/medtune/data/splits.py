"""Seeded k-fold cross-validation splits in nnU-Net's `splits_final.json` format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.io import save_json

SPLITS_FILE = "splits_final.json"


def make_splits(
    case_ids: list[str], num_folds: int = 5, seed: int = 12345
) -> list[dict[str, list[str]]]:
    """`num_folds` folds over the sorted case ids, shuffled with `seed`: [{"train", "val"}, ...]."""
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise MedtuneInputError("splits: expected unique case ids, found duplicates")
    if num_folds < 2 or len(ids) < num_folds:
        raise MedtuneInputError(
            f"splits: expected at least num_folds={num_folds} (>= 2) cases, found {len(ids)}"
        )
    perm = np.random.RandomState(seed).permutation(len(ids))
    folds = np.array_split(perm, num_folds)
    out = []
    for k in range(num_folds):
        val = sorted(ids[i] for i in folds[k])
        out.append({"train": sorted(set(ids) - set(val)), "val": val})
    return out


def get_splits(
    dataset_root_or_cache: str | Path, case_ids: list[str], num_folds: int = 5, seed: int = 12345
) -> list[dict[str, list[str]]]:
    """Folds from `<dir>/splits_final.json`, reused as is when it exists, else made and written.

    An existing file must name only cases in `case_ids`.
    """
    path = Path(dataset_root_or_cache) / SPLITS_FILE
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MedtuneInputError(f"{path}: expected JSON, found {exc}") from None
        if not isinstance(splits, list) or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits
        ):
            raise MedtuneInputError(
                f"{path}: expected a list of {{'train': [...], 'val': [...]}}, found something else"
            )
        unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - set(case_ids))
        if unknown:
            raise MedtuneInputError(
                f"{path}: expected case ids of this dataset, found unknown {unknown[:5]}"
            )
        return splits
    splits = make_splits(case_ids, num_folds, seed)
    save_json(splits, path)
    return splits


def find_splits(
    case_ids: list[str],
    folders: list[Path],
    num_folds: int = 5,
    seed: int = 12345,
    write_to: Path | None = None,
) -> tuple[list[dict[str, list[str]]], str]:
    """(folds, where they came from): the first `splits_final.json` among `folders`, else the
    seeded folds of `make_splits`, written to `write_to` when given (training writes them into
    its cache; evaluation makes the same folds in memory)."""
    for folder in folders:
        if (Path(folder) / SPLITS_FILE).is_file():
            return get_splits(folder, case_ids), str(Path(folder) / SPLITS_FILE)
    if write_to is not None:
        return get_splits(write_to, case_ids, num_folds, seed), str(Path(write_to) / SPLITS_FILE)
    return make_splits(case_ids, num_folds, seed), f"the folds made with seed {seed}"


def select_fold(
    splits: list[dict[str, list[str]]], fold: int, where: str, option: str
) -> dict[str, list[str]]:
    """Fold `fold` of `splits`; an index outside them raises naming `option` and `where`."""
    if not 0 <= fold < len(splits):
        raise MedtuneInputError(
            f"{option}: expected 0..{len(splits) - 1} ({where} has {len(splits)} folds), found {fold}"
        )
    return splits[fold]
