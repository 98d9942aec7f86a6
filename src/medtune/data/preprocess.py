"""Preprocessing cache: RAS orientation, optional resampling, crop, normalisation, `.npy` files.

Layout of a cache folder:

    dataset_props.json     dataset-level: labels, regions, channels, modality, spacing, slice
                           axis, per-channel normalisation (CT: percentiles, mean, std), cases
    cases/CASE.npy         image (C, D, H, W) float32, D along the slice axis (`medtune.data.axes`;
                           axial: D = Z inferior -> superior, H = X, W = Y)
    cases/CASE_seg.npy     label (D, H, W) uint8
    cases/CASE_fg.npy      sampled foreground voxels (N, 4) int32: (label, d, h, w)
    cases/CASE.json        what maps a prediction back to the original file's voxel grid,
                           and `checks`: the input checks the case passed (`CASE_CHECKS`)

Inputs are checked as `medtune check-data` checks them: an invertible affine, finite
intensities, integer label values declared in dataset.json; anything else is refused (one line
naming the file). Prediction inputs (`preprocess_image`) may instead have their non-finite
voxels replaced by 0 after normalisation (`nonfinite="zero"`).

Geometry uses MONAI (`LoadImage`, `Orientation`, `Spacing`), then the slice axis's transpose
(`medtune.data.axes.to_model_order`); `restore_to_original` undoes all of it from the recorded
axes and affines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Orientation, Spacing
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage
from tqdm import tqdm

from medtune.core.errors import MedtuneInputError
from medtune.data.axes import (
    AXIAL_AXES,
    median_ras_spacing,
    model_axes,
    model_spacing,
    resolve_slice_axis,
    to_model_order,
    to_ras_order,
)
from medtune.data.dataset import CaseFiles, DatasetInfo, load_dataset
from medtune.data.io import (
    check_label_values,
    file_fingerprint,
    load_images,
    non_finite_counts,
    save_json,
    save_npy,
)
from medtune.data.normalisation import ct_statistics, normalise
from medtune.data.props import DatasetProps

CACHE_VERSION = 2
"""Cache format. 2: cases record the input checks they passed (`CASE_CHECKS`); format 1 caches
may hold NaN images, truncated non-integer labels or identity-treated singular affines, which
cannot be told from the cached arrays, so they are rebuilt."""
CASE_CHECKS = ("invertible_affine", "finite_image", "integer_labels", "declared_labels")
"""Input checks a cached case passed when it was written (its JSON's `checks`)."""
NONFINITE = ("error", "zero")
"""What prediction does with NaN / Inf input voxels: refuse, or replace them by 0 after
normalisation (statistics over the finite voxels)."""
PROPS_FILE = "dataset_props.json"
FG_SAMPLES = 10000


def default_cache_dir(root: str | Path) -> Path:
    """`medtune_cache/<dataset folder name>` beside the dataset folder."""
    root = Path(root).resolve()
    return root.parent / "medtune_cache" / root.name


def _geometry(img, label, spacing):
    """Orient to RAS and resample; returns (img, label, geometry meta)."""
    meta: dict[str, Any] = {
        "original_affine": img.affine.numpy().tolist(),
        "original_shape": list(img.shape[1:]),
    }
    orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    img = orient(img)
    label = orient(label) if label is not None else None
    meta["oriented_affine"] = img.affine.numpy().tolist()
    meta["oriented_shape"] = list(img.shape[1:])
    if spacing is not None:
        img = Spacing(pixdim=tuple(spacing), mode="bilinear")(img)
        if label is not None:
            label = Spacing(pixdim=tuple(spacing), mode="nearest")(label)
    meta["resampled_affine"] = img.affine.numpy().tolist()
    meta["resampled_shape"] = list(img.shape[1:])
    return img, label, meta


def _crop(img: np.ndarray, meta: dict) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Crop (C, X, Y, Z) to the bounding box of voxels non-zero in any channel."""
    start, end = generate_spatial_bounding_box(img, select_fn=lambda x: x != 0)
    start, end = list(map(int, start)), list(map(int, end))
    if any(e <= s for s, e in zip(start, end)):  # all zero: keep everything
        start, end = [0, 0, 0], list(img.shape[1:])
    meta["bbox_start"], meta["bbox_end"] = start, end
    return img, tuple(slice(s, e) for s, e in zip(start, end))


def count_nonfinite(img: np.ndarray, files: list[Path]) -> dict[str, tuple[int, int]]:
    """{file: (NaN voxels, Inf voxels)} of the files of a loaded image `(C, X, Y, Z)` (one file
    per channel, or one 4D file) that hold any."""
    found: dict[str, list[int]] = {}
    for c in range(img.shape[0]):
        n_nan, n_inf = non_finite_counts(img[c])
        if n_nan or n_inf:
            f = str(files[c] if len(files) == img.shape[0] else files[0])
            acc = found.setdefault(f, [0, 0])
            acc[0] += n_nan
            acc[1] += n_inf
    return {f: (a, b) for f, (a, b) in found.items()}


def refuse_nonfinite(found: dict[str, tuple[int, int]], hint: str) -> None:
    """Raise one line naming the first file of `found` (`count_nonfinite`) and its counts."""
    if not found:
        return
    f, (n_nan, n_inf) = next(iter(found.items()))
    more = f" (and {len(found) - 1} more file(s))" if len(found) > 1 else ""
    raise MedtuneInputError(
        f"{f}: expected finite intensities, found {n_nan} NaN and {n_inf} Inf voxels{more}; {hint}"
    )


def _spacing_of(affine: np.ndarray) -> list[float]:
    return [float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))]


def to_model_space(img, label, props: DatasetProps):
    """(image (C, D, H, W) float32, label (D, H, W) uint8 or None, meta) in the cache's geometry:
    RAS, resampled, cropped, then D along `props.slice_axis` (`meta["axes"]`: the RAS axis of
    D, H, W; `meta["spacing"]`: mm along D, H, W)."""
    img, label, meta = _geometry(img, label, props.spacing)
    axes = model_axes(props.slice_axis)
    arr = img.numpy().astype(np.float32, copy=False)
    arr, sl = _crop(arr, meta)
    arr = np.ascontiguousarray(to_model_order(arr[(slice(None), *sl)], axes))
    arr = normalise(arr, props.normalisation)
    lab = None
    if label is not None:
        lab_xyz = np.rint(label.numpy()[0][sl])
        lab = np.ascontiguousarray(to_model_order(lab_xyz, axes)).astype(np.uint8)
    meta["slice_axis"], meta["axes"] = props.slice_axis, list(axes)
    meta["spacing"] = model_spacing(_spacing_of(np.asarray(meta["resampled_affine"])), axes)
    meta["shape"] = list(arr.shape)
    return arr, lab, meta


def _settings_key(props: DatasetProps) -> str:
    """What a cached case was built with; a change rebuilds it. The axial key is the one of
    caches written before the slice axis existed, so they stay valid."""
    spacing = list(props.spacing) if props.spacing is not None else None
    settings = [CACHE_VERSION, spacing, props.normalisation]
    if props.slice_axis != "axial":
        settings.append(props.slice_axis)
    key = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _case_sources(case: CaseFiles) -> dict[str, list]:
    files = list(case.images) + ([case.label] if case.label else [])
    return {str(f): file_fingerprint(f) for f in files}


@dataclass
class CacheIndex:
    """`dataset_props.json` of a cache folder: the dataset's properties and what was cached."""

    props: DatasetProps
    """Channels, labels, regions, conventions, normalisation and target spacing."""
    cases: list[str]
    """Training case ids."""
    dataset_root: str
    """The dataset folder the cache was built from."""
    sources_fingerprint: str = ""
    """Hash of every source file's size and mtime (CT statistics are recomputed when it changes)."""
    format_version: int = CACHE_VERSION
    """Cache format (a cache of an older format is rebuilt)."""
    slice_axis_setting: str = "axial"
    """`auto` when auto decided `props.slice_axis` (kept while that axis is asked for), else it."""
    median_spacing: list[float] | None = None
    """Median RAS voxel spacing (X, Y, Z) in mm of the cases, when `auto` needed it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "dataset_root": self.dataset_root,
            **self.props.to_dict(),
            "slice_axis_setting": self.slice_axis_setting,
            "median_spacing": self.median_spacing,
            "cases": list(self.cases),
            "sources_fingerprint": self.sources_fingerprint,
        }


def _resolve_axis(info: DatasetInfo, old: CacheIndex | None, spacing, setting: str):
    """(resolved slice axis, setting to record, median RAS spacing or None).

    `auto` is decided once: a cache whose axis `auto` decided, at the same target spacing,
    keeps it (cases added later never flip it), also after that axis was asked for by name
    (as a resumed run's resolved config does)."""
    decided = (
        old is not None
        and old.slice_axis_setting == "auto"
        and old.props.spacing == (tuple(spacing) if spacing is not None else None)
    )
    if setting != "auto":
        if decided and old.props.slice_axis == setting:
            return setting, "auto", old.median_spacing
        return setting, setting, None
    if decided:
        return old.props.slice_axis, "auto", old.median_spacing
    median = median_ras_spacing(c.images[0] for c in info.cases)
    axis = resolve_slice_axis("auto", spacing if spacing is not None else median)
    return axis, "auto", (list(median) if median is not None else None)


def _cache_index(info: DatasetInfo, cache: Path, spacing, slice_axis: str = "axial") -> CacheIndex:
    sources = {c.case_id: _case_sources(c) for c in info.cases}
    old = read_cache_index(cache) if (cache / PROPS_FILE).is_file() else None
    fp = hashlib.sha1(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:16]
    if info.props.modality == "ct":
        if (
            old
            and old.format_version == CACHE_VERSION  # older caches computed them on NaN too
            and old.sources_fingerprint == fp
            and old.props.normalisation
            and old.props.normalisation[0].get("scheme") == "ct"
        ):
            norm = old.props.normalisation
        else:
            norm = [ct_statistics(info)]
    else:
        norm = [{"scheme": "zscore_nonzero"} for _ in info.props.channel_names]
    axis, setting, median = _resolve_axis(info, old, spacing, slice_axis)
    props = dataclasses.replace(info.props, normalisation=norm, spacing=spacing, slice_axis=axis)
    ids = [c.case_id for c in info.cases]
    return CacheIndex(props, ids, str(info.root.resolve()), fp, CACHE_VERSION, setting, median)


def read_cache_index(cache: str | Path) -> CacheIndex:
    """The `dataset_props.json` of a cache folder (versionless files are format 1)."""
    path = Path(cache) / PROPS_FILE
    if not path.is_file():
        raise MedtuneInputError(
            f"{path}: expected a preprocessing cache (run medtune preprocess), found none"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedtuneInputError(f"{path}: expected JSON, found {exc}") from None
    return CacheIndex(
        props=DatasetProps.from_dict(data, str(path)),
        cases=[str(c) for c in data.get("cases") or []],
        dataset_root=str(data.get("dataset_root") or ""),
        sources_fingerprint=str(data.get("sources_fingerprint") or ""),
        format_version=int(data.get("format_version", data.get("version", 1))),
        slice_axis_setting=str(data.get("slice_axis_setting") or data.get("slice_axis") or "axial"),
        median_spacing=data.get("median_spacing"),
    )


def read_props(cache: str | Path) -> DatasetProps:
    """The dataset properties of a cache folder."""
    return read_cache_index(cache).props


def _is_current(cache: Path, case: CaseFiles, key: str) -> bool:
    base = cache / "cases" / case.case_id
    js = base.with_name(case.case_id + ".json")
    if not all(
        p.is_file()
        for p in (
            js,
            base.with_name(case.case_id + ".npy"),
            base.with_name(case.case_id + "_seg.npy"),
        )
    ):
        return False
    try:
        meta = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("settings_key") == key and meta.get("sources") == _case_sources(case)


def _fg_samples(lab: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for v in np.unique(lab):
        if v == 0:
            continue
        idx = np.argwhere(lab == v)
        if len(idx) > FG_SAMPLES:
            idx = idx[rng.choice(len(idx), FG_SAMPLES, replace=False)]
        out.append(np.concatenate([np.full((len(idx), 1), v), idx], 1))
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, 4), np.int32)


def _process_case(case: CaseFiles, cache: Path, props: dict, key: str) -> str:
    img = load_images(case.images)
    if len(case.images) == 1 and img.shape[0] != props.num_channels:
        raise MedtuneInputError(
            f"{case.images[0]}: expected {props.num_channels} channels, found {img.shape[0]}"
        )
    refuse_nonfinite(count_nonfinite(img.numpy(), case.images), "run medtune check-data")
    label = load_images(case.label)
    if tuple(label.shape[1:]) != tuple(img.shape[1:]):
        raise MedtuneInputError(
            f"{case.label}: expected the image shape {tuple(img.shape[1:])}, found {tuple(label.shape[1:])} (run medtune check-data)"
        )
    check_label_values(case.label, label.numpy(), props.labels.values())
    arr, lab, meta = to_model_space(img, label, props)
    out = cache / "cases"
    save_npy(arr, out / f"{case.case_id}.npy")
    save_npy(lab, out / f"{case.case_id}_seg.npy")
    save_npy(_fg_samples(lab, seed=len(case.case_id)), out / f"{case.case_id}_fg.npy")
    meta.update(
        case_id=case.case_id,
        settings_key=key,
        sources=_case_sources(case),
        checks=list(CASE_CHECKS),
    )
    save_json(meta, out / f"{case.case_id}.json")  # written last: marks the case complete
    return case.case_id


def _worker_init() -> None:
    # One thread per worker process, as torch's DataLoader does: forked OpenMP pools deadlock.
    torch.set_num_threads(1)


def _open_cache(cache: Path) -> tuple[bool, str | None]:
    """Create the cache folder; returns (built by another cache format, slice axis it was built
    along or None)."""
    try:
        (cache / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedtuneInputError(
            f"{cache}: expected a writable cache folder, found {exc.strerror}"
        ) from None
    outdated, old_axis = False, None
    if (cache / PROPS_FILE).is_file():
        old_index = read_cache_index(cache)
        old, old_axis = old_index.format_version, old_index.props.slice_axis
        outdated = old != CACHE_VERSION
        if outdated:
            print(
                f"{cache}: cache format {old} is outdated (this medtune writes format "
                f"{CACHE_VERSION}); rebuilding every case",
                file=sys.stderr,
            )
    return outdated, old_axis


def _process_cases(todo: list, cache: Path, props, key: str, workers: int, desc: str) -> None:
    """Preprocess the cases `todo` into `cache`, in `workers` forked processes when > 1."""
    bar = tqdm(
        total=len(todo),
        desc=desc,
        unit="case",
        file=sys.stderr,
        disable=not todo,
    )
    try:
        if workers > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init
            ) as pool:
                for _ in pool.map(
                    _process_case,
                    todo,
                    [cache] * len(todo),
                    [props] * len(todo),
                    [key] * len(todo),
                ):
                    bar.update()
        else:
            for c in todo:
                _process_case(c, cache, props, key)
                bar.update()
    finally:
        bar.close()  # an error is then printed on a line of its own


def preprocess_dataset(
    root: str | Path,
    cache: str | Path,
    workers: int = 1,
    spacing=None,
    return_stats: bool = False,
    slice_axis: str = "axial",
):
    """Build or update the cache of dataset `root` in `cache`; up-to-date cases are skipped.

    `spacing` is the target (X, Y, Z) spacing in mm or None for the native grid; `slice_axis`
    one of `medtune.data.axes.SLICE_AXIS_SETTINGS` (a cache built along another axis is
    rebuilt in place; `auto` is resolved once and recorded in `dataset_props.json`). Returns
    the cache path (with `return_stats`, also {"done": n, "skipped": n}).
    """
    resolve_slice_axis(slice_axis, None)  # an unknown axis raises before anything is written
    info = load_dataset(root)
    cache = Path(cache)
    outdated, old_axis = _open_cache(cache)
    index = _cache_index(info, cache, spacing, slice_axis)
    props = index.props
    key = _settings_key(props)
    todo = [c for c in info.cases if outdated or not _is_current(cache, c, key)]
    if old_axis not in (None, props.slice_axis) and not outdated and todo:
        print(
            f"{cache}: slice axis {props.slice_axis} (the cache was built {old_axis}); "
            f"rebuilding {len(todo)} case(s) in place (set data.cache to keep both)",
            file=sys.stderr,
        )
    save_json(index.to_dict(), cache / PROPS_FILE)
    _process_cases(todo, cache, props, key, workers, f"preprocess {info.props.name}")
    stats = {"done": len(todo), "skipped": len(info.cases) - len(todo)}
    return (cache, stats) if return_stats else cache


def ensure_cache(
    root: str | Path,
    cache: str | Path | None = None,
    spacing=None,
    workers: int = 1,
    slice_axis: str = "axial",
) -> Path:
    """The cache of `root` (default `default_cache_dir(root)`), built or updated as needed."""
    return preprocess_dataset(
        root,
        cache or default_cache_dir(root),
        workers=workers,
        spacing=spacing,
        slice_axis=slice_axis,
    )


def preprocess_image(
    image_files_or_4d, cache_or_props, nonfinite: str = "error"
) -> tuple[np.ndarray, dict]:
    """An unlabelled case in the training geometry: (image (C, D, H, W) float32, meta).

    `image_files_or_4d` is one file per channel or one 4D file; `cache_or_props` a cache
    folder or its `dataset_props.json` content. `meta` feeds `restore_to_original`.
    NaN / Inf voxels are refused (`nonfinite="error"`) or replaced by 0 after normalisation
    (`"zero"`; normalisation statistics over the finite voxels); `meta["nonfinite_replaced"]`
    counts them per input file.
    """
    if nonfinite not in NONFINITE:
        raise MedtuneInputError(
            f"--nonfinite: expected one of {', '.join(NONFINITE)}, found {nonfinite!r}"
        )
    props = (
        cache_or_props if isinstance(cache_or_props, DatasetProps) else read_props(cache_or_props)
    )
    img = load_images(image_files_or_4d)
    n = props.num_channels
    if img.shape[0] != n:
        raise MedtuneInputError(
            f"{image_files_or_4d}: expected {n} channel(s) ({', '.join(props.channel_names)}), found {img.shape[0]}"
        )
    files = [image_files_or_4d] if isinstance(image_files_or_4d, str | Path) else image_files_or_4d
    found = count_nonfinite(img.numpy(), list(files))
    if nonfinite == "error":
        refuse_nonfinite(found, "pass --nonfinite zero to replace them by 0 after normalisation")
    arr, _, meta = to_model_space(img, None, props)
    meta["nonfinite_replaced"] = {f: a + b for f, (a, b) in found.items()}
    return arr, meta


def restore_to_original(x: np.ndarray, meta: dict) -> np.ndarray:
    """Map a label map (D, H, W) or probabilities (K, D, H, W) back to the original file's grid.

    Undoes the slice axis's transpose (`meta["axes"]`, axial when absent), the crop (background
    outside: label 0, probability 1 for channel 0), the resampling (nearest for labels, linear
    for probabilities) and the orientation. Returns (X, Y, Z) or (K, X, Y, Z) matching
    `meta["original_shape"]`; write it with `meta["original_affine"]`.
    """
    x = np.asarray(x)
    probs = x.ndim == 4
    if x.ndim not in (3, 4):
        raise MedtuneInputError(
            f"restore_to_original: expected (D, H, W) or (K, D, H, W), found shape {x.shape}"
        )
    xyz = to_ras_order(x, meta.get("axes") or AXIAL_AXES)
    full_shape = tuple(meta["resampled_shape"])
    sl = tuple(slice(s, e) for s, e in zip(meta["bbox_start"], meta["bbox_end"]))
    if probs:
        full = np.zeros((x.shape[0], *full_shape), dtype=np.float32)
        full[0] = 1.0
        full[(slice(None), *sl)] = xyz
    else:
        full = np.zeros(full_shape, dtype=x.dtype)
        full[sl] = xyz
    oriented_shape = tuple(meta["oriented_shape"])
    a_r, a_o = np.asarray(meta["resampled_affine"]), np.asarray(meta["oriented_affine"])
    if full_shape != oriented_shape or not np.allclose(a_r, a_o, atol=1e-6):
        m = np.linalg.inv(a_r) @ a_o  # oriented voxel -> resampled voxel

        def warp(v, order):
            return ndimage.affine_transform(
                v,
                m[:3, :3],
                offset=m[:3, 3],
                output_shape=oriented_shape,
                order=order,
                mode="nearest",
            )

        full = np.stack([warp(c.astype(np.float32), 1) for c in full]) if probs else warp(full, 0)
    orig = np.asarray(meta["original_affine"])
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(orig)
    )
    if probs:
        out = np.stack([nib.orientations.apply_orientation(c, ornt) for c in full])
    else:
        out = nib.orientations.apply_orientation(full, ornt)
    out = np.ascontiguousarray(out)
    if tuple(out.shape[-3:]) != tuple(meta["original_shape"]):
        raise RuntimeError(
            f"restore_to_original: produced {out.shape}, expected {meta['original_shape']}"
        )
    return out
