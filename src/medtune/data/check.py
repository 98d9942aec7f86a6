"""Validate a dataset before training; every problem is one `CASE FILE: expected ..., found ...`.

Checks: dataset.json present, valid and complete; at least one case; unique case ids; every
channel file present; every file a readable, complete NIfTI; 3D images (4D with the declared
channels for MSD) with no zero-sized dimension; invertible affines (no zero column), channel and
label shapes equal; affines equal within `AFFINE_TOL`; label values integer and declared in
dataset.json; no NaN or Inf intensities. Nothing is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medtune.data.dataset import CaseFiles, DatasetInfo, Problem, scan_dataset
from medtune.data.io import affine_problem, non_finite_counts, non_integer_values

AFFINE_TOL = 1e-3
"""Largest difference (mm, or direction-cosine times spacing) between image and label affines."""


def _rel(path: Path, root: Path) -> str:
    """`path` relative to the dataset root, without following symlinks."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)))
    except ValueError:
        return str(path)


def _read(path: Path, case: str, rel: str, problems: list[Problem]):
    """(array, affine) or None after recording why the file cannot be used."""
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        if Path(path).is_symlink():  # e.g. a `convert --link` dataset whose source moved
            problems.append(
                Problem(case, rel, "a file", f"a broken symlink to {Path(path).readlink()}")
            )
        return None  # a plain missing file is reported by the layout scan
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for non-NIfTI files
        problems.append(
            Problem(case, rel, "a readable NIfTI file", f"{type(exc).__name__}: {str(exc)[:100]}")
        )
        return None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        problems.append(Problem(case, rel, "a NIfTI file", type(img).__name__))
        return None
    if 0 in img.shape:  # nibabel then hands out a 1D array of shape (0,)
        problems.append(
            Problem(
                case, rel, "a non-empty image", f"shape {tuple(img.shape)} (a zero-sized dimension)"
            )
        )
        return None
    problem = affine_problem(img.affine)
    if problem is not None:
        problems.append(
            Problem(case, rel, "an invertible affine (voxel -> mm, from the sform/qform)", problem)
        )
        return None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip / short files
        problems.append(
            Problem(
                case,
                rel,
                "a complete NIfTI file",
                f"unreadable data ({type(exc).__name__}: {str(exc)[:80]})",
            )
        )
        return None
    return data, img.affine


def _check_case(info: DatasetInfo, case: CaseFiles, problems: list[Problem]) -> None:
    first = _check_images(info, case, problems)
    if case.label is not None:
        _check_label(info, case, first, problems)


def _check_images(info: DatasetInfo, case: CaseFiles, problems: list[Problem]):
    """Check each channel file (dimensions, channels, finite values, one grid); returns the
    first readable channel's `(rel, spatial shape, affine)`, or None."""
    root, cid = info.root, case.case_id
    first = None  # (rel, shape, affine)
    want_4d = case.is_4d
    for path in case.images:
        rel = _rel(path, root)
        got = _read(path, cid, rel, problems)
        if got is None:
            continue
        data, affine = got
        if want_4d:
            if data.ndim != 4 or data.shape[3] != info.props.num_channels:
                problems.append(
                    Problem(
                        cid,
                        rel,
                        f"a 4D image with {info.props.num_channels} channels last",
                        f"shape {data.shape}",
                    )
                )
                continue
            spatial = data.shape[:3]
        else:
            if data.ndim != 3:
                problems.append(
                    Problem(cid, rel, "a 3D image", f"a {data.ndim}D array of shape {data.shape}")
                )
                continue
            spatial = data.shape
        n_nan, n_inf = non_finite_counts(data)
        if n_nan or n_inf:
            problems.append(
                Problem(cid, rel, "finite intensities", f"{n_nan} NaN and {n_inf} Inf voxels")
            )
        if first is None:
            first = (rel, spatial, affine)
        else:
            _compare(cid, rel, spatial, affine, first, problems)
    return first


def _check_label(info: DatasetInfo, case: CaseFiles, first, problems: list[Problem]) -> None:
    """Check the label map: 3D, the images' grid, integer values declared in dataset.json."""
    cid = case.case_id
    rel = _rel(case.label, info.root)
    got = _read(case.label, cid, rel, problems)
    if got is None:
        return
    data, affine = got
    if data.ndim != 3:
        problems.append(
            Problem(cid, rel, "a 3D label map", f"a {data.ndim}D array of shape {data.shape}")
        )
        return
    if first is not None:
        _compare(cid, rel, data.shape, affine, first, problems)
    vals = np.unique(data)
    declared = set(info.props.labels.values())
    bad = non_integer_values(vals)
    if bad:
        problems.append(Problem(cid, rel, "integer label values", f"{bad}"))
        return
    undeclared = sorted(int(v) for v in vals if int(v) not in declared)
    if undeclared:
        problems.append(
            Problem(
                cid,
                rel,
                f"label values declared in dataset.json {sorted(declared)}",
                f"{undeclared}",
            )
        )


def _compare(cid: str, rel: str, shape, affine, first, problems: list[Problem]) -> None:
    ref_rel, ref_shape, ref_affine = first
    if tuple(shape) != tuple(ref_shape):
        problems.append(
            Problem(cid, rel, f"shape {tuple(ref_shape)} as {ref_rel}", f"{tuple(shape)}")
        )
    diff = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
    if diff > AFFINE_TOL:
        problems.append(
            Problem(
                cid,
                rel,
                f"the affine of {ref_rel} (tolerance {AFFINE_TOL})",
                f"a difference of {diff:.4g}",
            )
        )


def check_dataset(
    root: str | Path, progress: bool = False
) -> tuple[DatasetInfo | None, list[Problem]]:
    """(info, problems) for the dataset at `root`; reads every file, writes nothing."""
    info, problems = scan_dataset(root)
    if info is None:
        return None, problems
    cases = info.cases + info.test_cases
    for case in tqdm(cases, desc="check-data", unit="case", file=sys.stderr, disable=not progress):
        _check_case(info, case, problems)
    return info, problems
