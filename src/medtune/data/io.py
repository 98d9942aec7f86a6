"""Small file helpers shared by the data layer: NIfTI endings, atomic writes, JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

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


def _tmp(path: Path) -> Path:
    # Keep the ending so that nibabel/numpy pick the right format for the temp file.
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype=None) -> Path:
    """Write `array` (X, Y, Z[, C]) with `affine` to `path` via a temp name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    tmp = _tmp(path)
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    return path


def save_npy(array: np.ndarray, path: str | Path) -> Path:
    """Write an uncompressed .npy (memory-mappable) via a temp name and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)
    return path


def save_json(data: Any, path: str | Path) -> Path:
    """Write JSON (indented, sorted as given) via a temp name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def copy_or_link(src: Path, dst: Path, link: bool) -> Path:
    """Copy `src` to `dst` (temp name + rename), or symlink it (absolute target) with `link`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dst)
    if link:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        os.symlink(Path(src).resolve(), tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def file_fingerprint(path: Path) -> list:
    """[size, mtime_ns] of a file, used to tell whether a cached case is up to date."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]
