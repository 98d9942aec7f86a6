"""Reading the preprocessing cache's cases: the arrays every training crop needs, a case with
its meta, and the check training runs on the cases it reads (`verify_cached_cases`).

The cache itself is written by `medtune.data.preprocess`; its layout: `CACHE/cases/CASE.npy`
(image `(C, D, H, W)` float32), `CASE_seg.npy` (label `(D, H, W)` uint8), `CASE.json` (meta).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.io import check_label_values, non_finite_counts
from medtune.data.preprocess import CASE_CHECKS, read_props


def _missing_case(exc: FileNotFoundError, case_id: str) -> MedtuneInputError:
    return MedtuneInputError(
        f"{exc.filename}: expected a cached case '{case_id}', found none (run medtune preprocess)"
    )


def load_case_arrays(cache: str | Path, case_id: str, mmap: bool = True):
    """(image (C, D, H, W) float32, label (D, H, W) uint8) of a cached case, without its meta
    (what the loaders need for every crop)."""
    base = Path(cache) / "cases"
    mode = "r" if mmap else None
    try:
        img = np.load(base / f"{case_id}.npy", mmap_mode=mode, allow_pickle=False)
        lab = np.load(base / f"{case_id}_seg.npy", mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as exc:
        raise _missing_case(exc, case_id) from None
    return img, lab


def load_case(cache: str | Path, case_id: str, mmap: bool = True):
    """(image (C, D, H, W) float32, label (D, H, W) uint8, meta) of a cached case."""
    img, lab = load_case_arrays(cache, case_id, mmap)
    try:
        meta = json.loads((Path(cache) / "cases" / f"{case_id}.json").read_text())
    except FileNotFoundError as exc:
        raise _missing_case(exc, case_id) from None
    return img, lab, meta


def verify_cached_cases(cache: str | Path, case_ids: list[str]) -> list[str]:
    """Check cached cases before training reads them; returns the ids checked here.

    A case whose `CASE.json` records every check of `CASE_CHECKS` passed them when preprocess
    wrote it (one small JSON read). Any other case (a cache written by hand or by an older
    medtune) has its arrays checked now: a finite image and declared label values. A failing
    case raises one line naming its file.
    """
    cache = Path(cache)
    checked, declared = [], None
    for cid in case_ids:
        path = cache / "cases" / f"{cid}.json"
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise _missing_case(exc, cid) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
        if isinstance(meta, dict) and set(CASE_CHECKS) <= set(meta.get("checks") or []):
            continue
        img, lab = load_case_arrays(cache, cid)
        n_nan, n_inf = non_finite_counts(img)
        rebuild = f"rebuild the cache: medtune preprocess DATASET_DIR --out {cache}"
        if n_nan or n_inf:
            raise MedtuneInputError(
                f"{cache / 'cases' / cid}.npy: expected finite intensities, found {n_nan} NaN "
                f"and {n_inf} Inf voxels ({rebuild})"
            )
        if declared is None:
            declared = read_props(cache).labels.values()
        try:
            check_label_values(cache / "cases" / f"{cid}_seg.npy", lab, declared)
        except MedtuneInputError as exc:
            raise MedtuneInputError(str(exc).replace("run medtune check-data", rebuild)) from None
        checked.append(cid)
    return checked
