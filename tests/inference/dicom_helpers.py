"""Writing small DICOM series with pydicom for the tests: a volume `(X, Y, Z)` on a RAS affine
(NIfTI convention) becomes one CT slice file per Z, in DICOM's LPS patient coordinates."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ds(values) -> list:
    """Decimal strings of at most 16 characters, as DICOM requires."""
    return [DSfloat(float(v), auto_format=True) for v in values]


def oblique_ras_affine(col_mm=0.7, row_mm=1.1, slice_mm=2.5, angle_deg=25.0) -> np.ndarray:
    """A RAS affine of an oblique, anisotropic series: voxel axes (column, row, slice) rotated
    about a skew axis, in-plane spacing `col_mm` x `row_mm`, slices `slice_mm` apart."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([col_mm, row_mm, slice_mm])
    aff[:3, 3] = [-31.5, 12.25, -40.0]
    return aff


def write_series(
    folder: Path,
    vol: np.ndarray,
    ras_affine: np.ndarray,
    *,
    shuffle: bool = True,
    reverse_numbers: bool = False,
    series_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    names: str = "IM{n:04d}.dcm",
) -> list[np.ndarray]:
    """Write `vol` `(X, Y, Z)` (integers, stored as int16 pixels with the given rescale) as one
    slice per Z into `folder`, in a shuffled file order when `shuffle`; InstanceNumber 1..Z
    follows the slices (reversed with `reverse_numbers`). Returns the LPS ImagePositionPatient
    of each slice z (as written)."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ np.asarray(ras_affine, dtype=np.float64)
    col_mm, row_mm = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / col_mm, lps[:3, 1] / row_mm
    uid = series_uid or generate_uid()
    nx, ny, nz = vol.shape
    order = list(range(nz))
    if shuffle:
        random.Random(nz).shuffle(order)
    positions = [lps[:3, 3] + z * lps[:3, 2] for z in range(nz)]
    stored = np.rint((np.asarray(vol, dtype=np.float64) - intercept) / slope).astype(np.int16)
    for n, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d = Dataset()
        d.file_meta = meta
        d.SOPClassUID = CTImageStorage
        d.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        d.SeriesInstanceUID = uid
        d.Modality = "CT"
        d.InstanceNumber = nz - z if reverse_numbers else z + 1
        d.ImageOrientationPatient = ds([*row_cos, *col_cos])
        d.ImagePositionPatient = ds(positions[z])
        d.PixelSpacing = ds([row_mm, col_mm])  # (between rows, between columns)
        d.SliceThickness = DSfloat(float(np.linalg.norm(lps[:3, 2])), auto_format=True)
        d.Rows, d.Columns = ny, nx
        d.SamplesPerPixel = 1
        d.PhotometricInterpretation = "MONOCHROME2"
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 16, 16, 15, 1
        d.RescaleSlope = DSfloat(slope, auto_format=True)
        d.RescaleIntercept = DSfloat(intercept, auto_format=True)
        d.PixelData = np.ascontiguousarray(stored[:, :, z].T).tobytes()  # (rows, columns)
        d.save_as(folder / names.format(n=n), enforce_file_format=True)
    return [np.array([float(v) for v in ds(p)]) for p in positions]


def read_back(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path))
