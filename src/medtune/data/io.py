"""Small file helpers shared by the data layer: NIfTI endings, atomic writes, JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medtune.core.atomic import atomic_write, atomic_write_text

NIFTI_ENDINGS = (".nii.gz", ".nii")


def nifti_ending(path: str | Path) -> str | None:
    """'.nii.gz' or '.nii' when `path` names a NIfTI file, else None."""
    name = Path(path).name
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def strip_nifti(path: str | Path) -> str:
    """File name without its NIfTI ending ('a_0000.nii.gz' -> 'a_0000')."""
    name = Path(path).name
    ending = nifti_ending(name)
    return name[: -len(ending)] if ending else name


def is_hidden(path: Path) -> bool:
    """Dot files, including macOS '._' resource forks shipped inside the MSD archives."""
    return path.name.startswith(".")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype=None) -> Path:
    """Write `array` (X, Y, Z[, C]) with `affine` to `path` via a temp name and a rename."""
    arr = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def save_npy(array: np.ndarray, path: str | Path) -> Path:
    """Write an uncompressed .npy (memory-mappable) via a temp name and a rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    return atomic_write(path, write)


def save_json(data: Any, path: str | Path) -> Path:
    """Write JSON (indented, sorted as given) via a temp name and a rename."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def copy_or_link(src: Path, dst: Path, link: bool) -> Path:
    """Copy `src` to `dst` (temp name + rename), or symlink it (absolute target) with `link`."""
    if link:
        return atomic_write(dst, lambda tmp: os.symlink(Path(src).resolve(), tmp))
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def file_fingerprint(path: Path) -> list:
    """[size, mtime_ns] of a file, used to tell whether a cached case is up to date."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]
