"""File I/O of the data layer: every NIfTI read and write, atomic writes, JSON.

- names: `NIFTI_ENDINGS`, `CHANNEL_RE` (`CASE_0000`), `nifti_ending`, `strip_nifti`, `list_nifti`;
- reading: `load_images` (MONAI `LoadImage`: channel files or one 4D file -> `(C, X, Y, Z)` with
  its affine), `read_label_map` (label map and spacing as stored), `nifti_geometry` (shape,
  affine, spacing from the header), `read_label_values` (labels, refusing NaN / fractions); the
  readers refuse a singular affine (`affine_problem`) and `read_label_map` non-integer labels
  (`non_integer_values`);
- `describe_folder`: what a folder holds when no NIfTI file was found in it (upper-case endings,
  a DICOM series, other files), for the "found none" messages;
- writing: `save_nifti` (new files), `write_like` (an output with a reference file's header and
  geometry, or on a `Geometry`: shape + affine without a file), `save_npy`, `save_json`,
  `copy_or_link`, all atomic (temporary name + rename).
- DICOM series (folders) are read in `medtune.data.dicom`; `load_images` hands folders to it.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medtune.core.atomic import atomic_write, atomic_write_text
from medtune.core.errors import MedtuneInputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
DESCRIBE_LIMIT = 10000
"""Most folder entries `describe_folder` looks at."""
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
"""nnU-Net channel file stem `CASE_XXXX` (without the file ending)."""


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


def list_nifti(folder: Path) -> list[Path]:
    """The NIfTI files of `folder` (not hidden, sorted by name)."""
    return [
        p
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and not is_hidden(p) and nifti_ending(p)
    ]


def affine_problem(affine) -> str | None:
    """What makes a voxel-to-mm affine unusable (None when it is invertible): non-finite values,
    a zero column (a voxel axis of length 0) or parallel columns."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return "non-finite values" if a.shape == (4, 4) else f"shape {a.shape}"
    norms = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    zero = [i for i, n in enumerate(norms) if n < 1e-6]
    if zero:
        cols = ", ".join(str(i) for i in zero)
        return f"column(s) {cols} all zero (spacing {[round(float(n), 6) for n in norms]})"
    det = abs(float(np.linalg.det(a[:3, :3]))) / float(np.prod(norms))
    if det < 1e-6:
        return f"a singular 3x3 part (parallel columns, normalised determinant {det:.2g})"
    return None


def check_affine(path: str | Path, affine) -> None:
    """Raise (one line naming `path`) when `affine` cannot map voxels to millimetres."""
    problem = affine_problem(affine)
    if problem is not None:
        raise MedtuneInputError(
            f"{path}: expected an invertible affine (voxel -> mm, from the sform/qform), "
            f"found {problem} (run medtune check-data)"
        )


def non_integer_values(arr: np.ndarray, limit: int = 5) -> list[float]:
    """Up to `limit` distinct values of `arr` that are not whole numbers (NaN and Inf included);
    empty for integer arrays."""
    arr = np.asarray(arr)
    if arr.dtype.kind != "f":
        return []
    bad = arr[~(np.isfinite(arr) & (arr == np.rint(arr)))]
    return [float(v) for v in np.unique(bad)[:limit]]


def non_finite_counts(arr: np.ndarray) -> tuple[int, int]:
    """(NaN voxels, Inf voxels) of an array; (0, 0) for integer arrays."""
    arr = np.asarray(arr)
    if arr.dtype.kind != "f":
        return 0, 0
    finite = np.isfinite(arr)
    if finite.all():
        return 0, 0
    n_nan = int(np.isnan(arr).sum())
    return n_nan, int(arr.size - finite.sum()) - n_nan


DICOM_HINTS = {
    "predict": "predict reads DICOM Part 10 files (a 'DICM' preamble) from one folder per case "
    "(the series, or one sub-folder per channel)",
    "convert": "convert --format dicom reads DICOM Part 10 files (a 'DICM' preamble): the "
    "series, or one sub-folder per channel",
    "": "not read here: convert the series to a NIfTI dataset first (medtune convert --format "
    "dicom)",
}
"""What `describe_folder` suggests for DICOM files, per tool ("" for every other tool)."""


def describe_folder(folder: Path, tool: str) -> str:
    """What `folder` holds instead of NIfTI files, for "found ..." messages: files whose ending
    differs only in case (`.NII.GZ`), a DICOM series (with how `tool` reads DICOM), other files,
    or nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder" if not folder.exists() else "a file, not a folder"
    files, dicom, wrong_case = [], 0, {}
    for p in sorted(itertools.islice(folder.rglob("*"), DESCRIBE_LIMIT)):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        files.append(p)
        low = p.name.lower()
        ending = next((e for e in NIFTI_ENDINGS if low.endswith(e)), None)
        if ending and not nifti_ending(p):
            got = p.name[-len(ending) :]
            wrong_case[got] = wrong_case.get(got, 0) + 1
        elif low.endswith((".dcm", ".ima")) or is_dicom_file(p):
            dicom += 1
    if wrong_case:
        got, n = max(wrong_case.items(), key=lambda kv: kv[1])
        want = next(e for e in NIFTI_ENDINGS if got.lower() == e)
        return f"{n} file(s) ending {got} (endings are case-sensitive: rename to {want})"
    if dicom:
        hint = DICOM_HINTS.get(tool, DICOM_HINTS[""])
        return f"a DICOM series ({dicom} DICOM file(s)); {hint}"
    if files:
        names = ", ".join(str(p.relative_to(folder)) for p in files[:3])
        return f"none ({len(files)} other file(s), e.g. {names})"
    return "none (the folder is empty)"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


@functools.cache
def _loader():
    """MONAI's `LoadImage` with its NIfTI reader, built once per process.

    `LoadImage` also builds every other registered reader; with pydicom installed, MONAI's
    nvImageCodec DICOM reader then logs a warning and warns (two stderr lines per command) on
    machines without nvImageCodec. Both are silenced while it is built."""
    from monai.transforms import LoadImage

    log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            return LoadImage(
                reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32
            )
    finally:
        log.setLevel(level)


def load_images(files: list[Path] | Path | str):
    """MetaTensor (C, X, Y, Z) from one file per channel or one 4D file (channels last on disk);
    a folder stands for a DICOM series (one channel, `medtune.data.dicom.load_series`)."""
    files = [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files]
    loader = _loader()
    chans = []
    for f in files:
        if f.is_dir():
            from medtune.data.dicom import load_series

            chans.append(load_series(f))
            continue
        try:
            header = nib.load(str(f))
            if 0 in header.shape:
                raise MedtuneInputError(
                    f"{f}: expected a non-empty image, found shape {tuple(header.shape)}"
                )
            check_affine(f, header.affine)
            x = loader(str(f))
        except MedtuneInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - MONAI/nibabel raise many types for bad files
            raise MedtuneInputError(
                f"{f}: expected a readable NIfTI image, found {type(exc).__name__}: {str(exc)[:120]} (run medtune check-data)"
            ) from None
        if x.ndim != 4:
            raise MedtuneInputError(
                f"{f}: expected a 3D image{' or 4D (channels last)' if len(files) == 1 else ''}, found shape {tuple(x.shape[1:])}"
            )
        chans.append(x)
    shapes = {tuple(c.shape[1:]) for c in chans}
    if len(shapes) > 1:
        raise MedtuneInputError(
            f"{files[0].parent}: expected channel files of one shape, found {sorted(shapes)}"
        )
    if len(chans) == 1:
        return chans[0]
    import torch

    return torch.cat(chans, 0)


def check_label_values(path: str | Path, arr: np.ndarray, declared=None) -> None:
    """Raise (one line naming `path`) when the label map `arr` holds non-integer values, or
    values outside `declared` (label values of dataset.json) when given."""
    bad = non_integer_values(arr)
    if bad:
        raise MedtuneInputError(
            f"{path}: expected integer label values, found {bad} (run medtune check-data)"
        )
    if declared is not None:
        allowed = sorted(int(v) for v in declared)
        undeclared = sorted(set(_present_values(arr)) - set(allowed))
        if undeclared:
            raise MedtuneInputError(
                f"{path}: expected label values declared in dataset.json {allowed}, found "
                f"{undeclared[:10]} (run medtune check-data)"
            )


def _present_values(arr: np.ndarray) -> list[int]:
    """The distinct values of an integer-valued label map (a count per value when the values are
    small, which is much faster than sorting every voxel)."""
    arr = np.asarray(arr)
    if arr.size == 0:
        return []
    lo, hi = arr.min(), arr.max()
    if lo >= 0 and hi < 65536:
        counts = np.bincount(arr.astype(np.int64, copy=False).ravel(), minlength=1)
        return np.flatnonzero(counts).tolist()
    return np.unique(arr).astype(np.int64).tolist()


def read_label_map(path: Path, declared=None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Label map `(X, Y, Z)` as stored in the file, and its voxel spacing in mm.

    Refused (one line naming the file): a singular affine, non-integer values and, when
    `declared` (the dataset's label values) is given, values outside it."""
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedtuneInputError(
            f"{path}: expected a readable NIfTI label map, found {type(exc).__name__}: "
            f"{str(exc)[:100]} (run medtune check-data)"
        ) from None
    check_affine(path, img.affine)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    check_label_values(path, arr, declared)
    arr = arr.astype(np.uint8 if arr.min() >= 0 and arr.max() < 256 else np.int32)
    spacing = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
    return arr, tuple(float(s) for s in spacing)


@dataclass(frozen=True)
class Geometry:
    """A voxel grid without a NIfTI file (e.g. a DICOM series'): what `write_like` writes in."""

    shape: tuple[int, int, int]
    """(X, Y, Z) voxels."""
    affine: np.ndarray
    """Voxel -> RAS mm `(4, 4)`, the NIfTI convention."""


def _is_orthogonal(affine: np.ndarray) -> bool:
    """True when the voxel axes are orthogonal (a qform can hold the affine: no shear)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    m = m / np.linalg.norm(m, axis=0)
    return bool(np.abs(m.T @ m - np.eye(3)).max() < 1e-5)


def _header_like(data: np.ndarray, reference: Path):
    ref = nib.load(str(reference))
    klass = nib.Nifti2Image if isinstance(ref, nib.Nifti2Image) else nib.Nifti1Image
    hdr = klass.header_class.from_header(ref.header)
    sform, sform_code = ref.header.get_sform(coded=True)
    qform, qform_code = ref.header.get_qform(coded=True)
    hdr.set_data_dtype(data.dtype)
    img = klass(data, ref.affine, header=hdr)
    if sform is not None:
        img.set_sform(sform, int(sform_code))
    else:
        img.set_sform(None, 0)
    if qform is not None:
        img.set_qform(qform, int(qform_code))
    else:
        img.set_qform(None, 0)
    return img


def _header_of_geometry(data: np.ndarray, geometry: Geometry, path: Path):
    if tuple(data.shape[:3]) != tuple(int(n) for n in geometry.shape):
        raise MedtuneInputError(
            f"{path}: expected data on the grid {tuple(geometry.shape)}, found shape {data.shape}"
        )
    affine = np.asarray(geometry.affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)  # scanner-based world coordinates
    # a qform cannot hold a shear (gantry-tilted CT); the sform then carries the geometry alone
    img.set_qform(
        affine if _is_orthogonal(affine) else None, code=1 if _is_orthogonal(affine) else 0
    )
    return img


def write_like(data: np.ndarray, reference: Path | Geometry, path: Path, description: str) -> Path:
    """Write `data` `(X, Y, Z[, K])` as NIfTI with the header, sform and qform of `reference`
    (its shape, affine and spacing), via a temporary name and a rename.

    `reference` is a NIfTI file, or a `Geometry` (shape + RAS affine, e.g. of a DICOM series):
    then a fresh NIfTI-1 header gets that affine as sform and qform (code 1, scanner), or as
    sform alone when the affine is sheared."""
    if isinstance(reference, Geometry):
        img = _header_of_geometry(data, reference, path)
    else:
        img = _header_like(data, reference)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.header["descrip"] = description[:79].encode()
    if data.ndim == 3:
        img.header["intent_code"] = 0
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def nifti_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray, tuple[float, float, float]]:
    """Shape, affine `(4, 4)` and voxel spacing (mm, the column norms of the affine) of a NIfTI
    file, from its header alone; an unreadable file raises MedtuneInputError naming it."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for non-NIfTI files
        raise MedtuneInputError(
            f"{path}: expected a readable NIfTI file, found {type(exc).__name__}: {str(exc)[:100]}"
        ) from None
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return tuple(int(n) for n in img.shape), affine, tuple(float(s) for s in spacing)


def read_label_values(path: Path) -> np.ndarray:
    """Label map `(X, Y, Z)` of a NIfTI file as integers (a trailing axis of length 1 dropped).

    Unlike `read_label_map`, nothing is rounded: NaN / Inf or fractional values (e.g. a
    probability map given as labels) raise MedtuneInputError naming the file and the values.
    """
    try:
        arr = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short files
        raise MedtuneInputError(
            f"{path}: expected a complete NIfTI file, found {type(exc).__name__}: {str(exc)[:100]}"
        ) from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise MedtuneInputError(f"{path}: expected a 3D label map, found shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int((~np.isfinite(arr)).sum())
        if n_bad:
            raise MedtuneInputError(
                f"{path}: expected finite label values, found {n_bad} NaN or Inf voxel(s)"
            )
        vals = np.unique(arr)
        frac = vals[vals != np.round(vals)]
        if frac.size:
            raise MedtuneInputError(
                f"{path}: expected integer label values, found {[float(v) for v in frac[:5]]}"
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MedtuneInputError(f"{path}: expected integer labels, found dtype {arr.dtype}")
    return np.asarray(arr)
