"""DICOM series in: one series per folder, checked from its headers and read with its geometry.

A series folder holds the single-frame slices of one series (files with the DICOM Part 10
preamble; other files are ignored). `series_geometry` reads the headers only (pydicom,
`stop_before_pixels`) and refuses, with one line naming the file or folder, what would give a
wrong volume: no slice or a single one, several series (`SeriesInstanceUID`), multi-frame files,
missing or differing `ImageOrientationPatient` / `PixelSpacing` / size, missing or repeated
`InstanceNumber`, and slices that do not lie equally spaced on one line in `InstanceNumber`
order (a missing slice, a mixed series). `load_series` then reads the pixels with MONAI's
`PydicomReader` (which stacks the slices in `InstanceNumber` order, applies `RescaleSlope` /
`RescaleIntercept` and converts the geometry from DICOM's LPS to RAS) and checks that the
affine it built is the one the headers give.

Geometry: the volume is `(X, Y, Z)` = (column, row, slice) as MONAI lays it out, with the RAS
affine of NIfTI (`diag(-1, -1, 1) @` the LPS affine): column 0 = row direction cosine x column
spacing (`PixelSpacing[1]`), column 1 = column direction cosine x row spacing
(`PixelSpacing[0]`), column 2 = the step between consecutive slice positions, column 3 = the
`ImagePositionPatient` of the first slice. A gantry-tilted CT series (slice positions not along
the slice normal) gives a sheared affine, as its positions say.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.io import check_affine, is_dicom_file, is_hidden

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Flips x and y: DICOM patient coordinates (LPS) <-> NIfTI / RAS world coordinates."""
POSITION_TOL_MM = 1e-3
"""Slack (mm, plus 1 % of the slice step) for slice positions off the series' line."""
AFFINE_TOL = 1e-3
"""Largest difference between MONAI's affine and the one of the headers."""


@dataclass
class SeriesGeometry:
    """The geometry of one series folder, from its headers."""

    folder: Path
    shape: tuple[int, int, int]
    """(X, Y, Z) = (columns, rows, slices)."""
    affine: np.ndarray
    """RAS voxel -> mm `(4, 4)` (NIfTI convention)."""
    files: list[Path]
    """The slices in `InstanceNumber` order."""


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` (Part 10 preamble; hidden files skipped), sorted."""
    return [
        p
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and not is_hidden(p) and is_dicom_file(p)
    ]


def has_dicom(folder: Path) -> bool:
    """True when `folder` directly holds at least one DICOM file."""
    folder = Path(folder)
    return folder.is_dir() and any(
        p.is_file() and not is_hidden(p) and is_dicom_file(p) for p in folder.iterdir()
    )


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise MedtuneInputError(
            f"{path}: expected a readable DICOM file, found {type(exc).__name__}: {str(exc)[:100]}"
        ) from None


def _floats(ds, path: Path, tag: str, n: int) -> np.ndarray:
    value = getattr(ds, tag, None)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.all(np.isfinite(out)):
        raise MedtuneInputError(
            f"{path}: expected {tag} with {n} finite numbers (the slice geometry), found "
            f"{'none' if value is None else repr(value)[:60]}"
        )
    return out


def _slice_record(path: Path) -> dict:
    ds = _read_header(path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedtuneInputError(
            f"{path}: expected single-frame DICOM slices, found a multi-frame file ({frames} "
            "frames); convert it to NIfTI first (e.g. dcm2niix)"
        )
    number = getattr(ds, "InstanceNumber", None)
    if number is None or str(number).strip() == "":
        raise MedtuneInputError(
            f"{path}: expected an InstanceNumber (the reader stacks slices in its order), "
            "found none"
        )
    return {
        "path": path,
        "series": str(getattr(ds, "SeriesInstanceUID", "")),
        "number": int(number),
        "iop": _floats(ds, path, "ImageOrientationPatient", 6),
        "ipp": _floats(ds, path, "ImagePositionPatient", 3),
        "spacing": _floats(ds, path, "PixelSpacing", 2),
        "size": (int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)),
    }


def _check_alike(slices: list[dict], folder: Path) -> None:
    """One series, one orientation, one pixel spacing, one size, unique instance numbers."""
    series = sorted({s["series"] for s in slices})
    if len(series) > 1:
        raise MedtuneInputError(
            f"{folder}: expected one DICOM series per folder, found {len(series)} "
            f"(SeriesInstanceUID {', '.join(series[:3])}); put each series in its own folder"
        )
    first = slices[0]
    for s in slices[1:]:
        for key, tag, tol in (
            ("iop", "ImageOrientationPatient", 1e-4),
            ("spacing", "PixelSpacing", 1e-4),
        ):
            if np.abs(s[key] - first[key]).max() > tol:
                raise MedtuneInputError(
                    f"{s['path']}: expected the {tag} of {first['path'].name} "
                    f"{first[key].round(6).tolist()}, found {s[key].round(6).tolist()}"
                )
        if s["size"] != first["size"]:
            raise MedtuneInputError(
                f"{s['path']}: expected {first['size'][0]} x {first['size'][1]} pixels (rows x "
                f"columns) as {first['path'].name}, found {s['size'][0]} x {s['size'][1]}"
            )
    seen: dict[int, Path] = {}
    for s in slices:
        if s["number"] in seen:
            raise MedtuneInputError(
                f"{s['path']}: expected unique InstanceNumbers in the series, found "
                f"{s['number']} also in {seen[s['number']].name}"
            )
        seen[s["number"]] = s["path"]


def series_geometry(folder: str | Path) -> SeriesGeometry:
    """Shape `(X, Y, Z)` and RAS affine of the series in `folder`, from its headers alone;
    anything that would give a wrong volume raises one line (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedtuneInputError(
            f"{folder}: expected a DICOM series folder, found "
            f"{'a file' if folder.exists() else 'no such folder'}"
        )
    files = dicom_files(folder)
    if not files:
        raise MedtuneInputError(f"{folder}: expected the DICOM files of a series, found none")
    slices = [_slice_record(f) for f in files]
    if len(slices) < 2:
        raise MedtuneInputError(
            f"{folder}: expected a series of at least 2 slices (a volume), found 1 ({files[0].name})"
        )
    _check_alike(slices, folder)
    slices.sort(key=lambda s: s["number"])
    pos = np.stack([s["ipp"] for s in slices])
    n = len(slices)
    step = (pos[-1] - pos[0]) / (n - 1)
    line = pos[0] + np.arange(n)[:, None] * step
    off = np.sqrt(((pos - line) ** 2).sum(1))
    tol = POSITION_TOL_MM + 0.01 * float(np.linalg.norm(step))
    if off.max() > tol:
        k = int(off.argmax())
        raise MedtuneInputError(
            f"{slices[k]['path']}: expected equally spaced slices on one line in InstanceNumber "
            f"order (step {np.linalg.norm(step):.4g} mm), found this slice {off[k]:.3g} mm off "
            "(a missing slice, a mixed series or InstanceNumbers out of position order)"
        )
    iop, (row_sp, col_sp) = slices[0]["iop"], slices[0]["spacing"]
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_sp  # along a row: columns advance, spaced PixelSpacing[1]
    lps[:3, 1] = iop[3:] * row_sp  # down a column: rows advance, spaced PixelSpacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    affine = LPS_TO_RAS @ lps
    check_affine(folder, affine)
    rows, cols = slices[0]["size"]
    return SeriesGeometry(folder, (cols, rows, n), affine, [s["path"] for s in slices])


def load_series(folder: str | Path):
    """MetaTensor `(1, X, Y, Z)` float32 of the series in `folder` with its RAS affine.

    The headers are checked first (`series_geometry`); the pixels are read by MONAI's
    `PydicomReader` (called directly: `LoadImage` would also build its nvImageCodec reader,
    which logs a warning on machines without it)."""
    import torch
    from monai.data import MetaTensor, PydicomReader

    geom = series_geometry(folder)
    reader = PydicomReader(fname_regex=None)  # None: only files with the DICOM preamble
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, meta = reader.get_data(reader.read(str(geom.folder)))
    except Exception as exc:  # noqa: BLE001 - pydicom / MONAI raise many types for bad pixels
        raise MedtuneInputError(
            f"{geom.folder}: expected readable DICOM pixel data, found {type(exc).__name__}: "
            f"{str(exc)[:120]}"
        ) from None
    arr = np.asarray(arr)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if tuple(arr.shape) != geom.shape:
        raise MedtuneInputError(
            f"{geom.folder}: expected a volume of {geom.shape} (columns, rows, slices), the "
            f"reader gave {tuple(arr.shape)}"
        )
    diff = float(np.abs(affine - geom.affine).max())
    if diff > AFFINE_TOL:
        raise MedtuneInputError(
            f"{geom.folder}: expected the reader's affine to equal the one of the slice "
            f"headers, found a difference of {diff:.3g} (unparsable geometry tags?)"
        )
    data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    return MetaTensor(data, affine=torch.as_tensor(affine, dtype=torch.float64))


def _channel_of(name: str, channel_names: list[str]) -> int | None:
    """Channel index named by a DICOM sub-folder: `0000`-style index or channel name (any case)."""
    if len(name) == 4 and name.isdigit():
        return int(name) if int(name) < len(channel_names) else None
    lower = [c.lower() for c in channel_names]
    return lower.index(name.lower()) if name.lower() in lower else None


def case_series(folder: Path, channel_names: list[str], top: bool = False) -> list[Path] | None:
    """The series folders (one per channel, in channel order) of the DICOM case folder `folder`:
    its own series (one-channel models), or one sub-folder per channel named by its index
    (`0000`, ...) or its channel name (any case); None when `folder` holds no DICOM case. With
    `top` (the `--input` folder itself), channel sub-folders count only when they are exactly
    one per channel, so that a folder of case folders is not mistaken for one case."""
    n, names = len(channel_names), ", ".join(channel_names)
    want = f"one sub-folder per channel (0000..{n - 1:04d} or {names})"
    if has_dicom(folder):
        if n > 1:
            raise MedtuneInputError(
                f"{folder}: expected {want} for a {n}-channel model, found a single DICOM series"
            )
        return [folder]
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    series = [d for d in subs if has_dicom(d)]
    if not series:
        return None
    chans: dict[int, Path] = {}
    for d in series:
        ch = _channel_of(d.name, channel_names)
        if ch is None:
            if top:
                return None
            raise MedtuneInputError(f"{d}: expected {want}, found a series folder named {d.name}")
        if ch in chans:
            raise MedtuneInputError(
                f"{d}: expected one series for channel {ch:04d} ({channel_names[ch]}), found "
                f"also {chans[ch].name}"
            )
        chans[ch] = d
    missing = [c for c in range(n) if c not in chans]
    if missing and top:
        return None
    if missing:
        c = missing[0]
        raise MedtuneInputError(
            f"{folder / f'{c:04d}'}: expected the series of channel {c} ({channel_names[c]}) of "
            f"case {folder.name} (a sub-folder {c:04d} or {channel_names[c]}), found none"
        )
    return [chans[c] for c in range(n)]


def check_same_grid(geoms: list[SeriesGeometry], what: str) -> None:
    """Raise when the series of one case (its channels) do not share one voxel grid."""
    ref = geoms[0]
    for g in geoms[1:]:
        if g.shape != ref.shape:
            raise MedtuneInputError(
                f"{g.folder}: expected the {what} grid of {ref.folder.name} {ref.shape}, "
                f"found {g.shape}"
            )
        diff = float(np.abs(g.affine - ref.affine).max())
        if diff > AFFINE_TOL:
            raise MedtuneInputError(
                f"{g.folder}: expected the geometry of {ref.folder.name} (tolerance "
                f"{AFFINE_TOL}), found an affine differing by {diff:.4g}; resample the series "
                "onto one grid first"
            )
