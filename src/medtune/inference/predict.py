"""`medtune predict`: label maps for new images, written in each input file's own geometry.

Inputs (`--input`, a file or a folder):

- nnU-Net-style channel files `CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ... (grouped by CASE; one
  file per channel the model was trained on). Naming one of them picks up its siblings.
- a single 4D NIfTI per case (channels last), or a 3D file for a one-channel model;
- a folder holding any mix of the above, or a folder of case folders (one level);
- DICOM: a folder of case folders, each holding one series (one-channel models) or one
  sub-folder per channel named by its index (`0000`, `0001`, ...) or its channel name
  (case-insensitive); or one such case folder itself. Series are read with their geometry
  (`medtune.data.dicom`), and the outputs get that geometry: the series' RAS affine as sform and
  qform of a new NIfTI header.

Outputs in `--out`: `CASE.nii.gz`, a label map with exactly the input's shape, affine (sform and
qform) and header, in the source dataset's label convention (`source_labels`, e.g. BraTS 2019
ET written back as 4); with `--save-probabilities` also `CASE_probs.nii.gz`, float32
`(X, Y, Z, K)`: volume k is the probability of class k (the k-th smallest label value of the
model's dataset), on the same grid. Each file is written to a temporary name and renamed.
Nothing is ever written into an input folder, and existing outputs are kept unless `overwrite`.
Inputs with a singular affine are refused before the model loads; NaN / Inf voxels are refused
when a case is read, or replaced by 0 after normalisation with `nonfinite="zero"` (noted on
stderr).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.io import (
    CHANNEL_RE,
    NIFTI_ENDINGS,
    Geometry,
    check_affine,
    describe_folder,
    is_dicom_file,
    list_nifti,
    nifti_ending,
    strip_nifti,
    write_like,
)
from medtune.inference.ensemble import EnsemblePredictor, ensemble_props
from medtune.inference.options import InferenceOptions
from medtune.inference.predictor import Predictor, load_predictor, restore_labels

OUT_ENDING = ".nii.gz"
PROBS_SUFFIX = "_probs"


@dataclass
class InputCase:
    """One case to predict: its id and its image files (one per channel, or one 4D file)."""

    case_id: str
    files: list[Path]


def _group(files: list[Path], channel_names: list[str]) -> list[InputCase]:
    """Group the NIfTI files of one folder into cases (channel files by CASE, others alone)."""
    n = len(channel_names)
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    cases: list[InputCase] = []
    for f in files:
        stem = strip_nifti(f)
        m = CHANNEL_RE.match(stem)
        if not m:
            cases.append(InputCase(stem, [f]))
            continue
        ch = int(m["ch"])
        if ch in groups[m["case"]]:
            raise MedtuneInputError(
                f"{f}: expected one file for channel {ch:04d} of case {m['case']}, "
                f"found also {groups[m['case']][ch].name}"
            )
        groups[m["case"]][ch] = f
    names = ", ".join(channel_names)
    for case, chans in sorted(groups.items()):
        folder = next(iter(chans.values())).parent
        for ch in sorted(chans):
            if ch >= n:
                raise MedtuneInputError(
                    f"{chans[ch]}: expected channel files {case}_0000..{case}_{n - 1:04d} "
                    f"({n} channel(s): {names}), found channel {ch:04d}"
                )
        for ch in range(n):
            if ch not in chans:
                raise MedtuneInputError(
                    f"{folder / f'{case}_{ch:04d}{OUT_ENDING}'}: expected the file of channel "
                    f"{ch} ({channel_names[ch]}) of case {case}, found none"
                )
        cases.append(InputCase(case, [chans[ch] for ch in range(n)]))
    return cases


def _folder_cases(p: Path, channel_names: list[str]) -> list[InputCase]:
    """Cases of an `--input` folder: NIfTI files in it, or the folder as one DICOM case, or its
    case folders (NIfTI files or DICOM series)."""
    files = list_nifti(p)
    if files:
        return _group(files, channel_names)
    from medtune.data.dicom import case_series

    own = case_series(p, channel_names, top=True)
    if own is not None:
        return [InputCase(p.name, own)]
    found: list[InputCase] = []
    for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
        sub_files = list_nifti(sub)
        if sub_files:
            found.extend(_group(sub_files, channel_names))
        elif (series := case_series(sub, channel_names)) is not None:
            found.append(InputCase(sub.name, series))
    return found


def find_cases(inputs, channel_names: list[str]) -> list[InputCase]:
    """Cases of `inputs` (a path or a list of paths: files or folders), sorted by case id."""
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, str | os.PathLike) else inputs)]
    if not paths:
        raise MedtuneInputError("--input: expected a NIfTI file or a folder, found nothing")
    cases: list[InputCase] = []
    for p in paths:
        if not p.exists():
            raise MedtuneInputError(
                f"--input {p}: expected a NIfTI file or a folder, found no such path"
            )
        if p.is_file():
            if not nifti_ending(p):
                hint = ""
                if p.name.lower().endswith(NIFTI_ENDINGS):
                    hint = " (endings are case-sensitive: rename it to end .nii.gz or .nii)"
                elif is_dicom_file(p):
                    hint = " (a DICOM slice: pass the folder of its case instead)"
                raise MedtuneInputError(
                    f"--input {p}: expected a .nii.gz or .nii file, found {p.name}{hint}"
                )
            m = CHANNEL_RE.match(strip_nifti(p))
            if m:  # one channel file: take its siblings of the same case
                siblings = [
                    f
                    for f in list_nifti(p.parent)
                    if (s := CHANNEL_RE.match(strip_nifti(f))) and s["case"] == m["case"]
                ]
                cases.extend(_group(siblings, channel_names))
            else:
                cases.append(InputCase(strip_nifti(p), [p]))
            continue
        found = _folder_cases(p, channel_names)
        if not found:
            raise MedtuneInputError(
                f"--input {p}: expected NIfTI images (CASE_0000.nii.gz, ..., 4D files), case "
                f"folders holding them or DICOM case folders, found {describe_folder(p, 'predict')}"
            )
        cases.extend(found)
    seen: dict[str, InputCase] = {}
    for c in cases:
        if c.case_id in seen and seen[c.case_id].files != c.files:
            raise MedtuneInputError(
                f"{c.files[0]}: expected unique case ids, found case {c.case_id} also at "
                f"{seen[c.case_id].files[0]}"
            )
        seen[c.case_id] = c
    return [seen[k] for k in sorted(seen)]


def _check_headers(case: InputCase, channel_names: list[str]) -> None:
    """Shapes from the headers only: channel files 3D and alike, a single file 4D with one
    volume per channel (3D for a one-channel model)."""
    n = len(channel_names)
    if case.files[0].is_dir():  # DICOM series, one per channel (see case_series)
        from medtune.data.dicom import check_same_grid, series_geometry

        check_same_grid([series_geometry(d) for d in case.files], "channel")
        return
    shapes = []
    for f in case.files:
        try:
            header = nib.load(str(f))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
            raise MedtuneInputError(
                f"{f}: expected a readable NIfTI image, found {type(exc).__name__}: {str(exc)[:100]}"
            ) from None
        check_affine(f, header.affine)
        shapes.append(tuple(int(s) for s in header.shape))
    if len(case.files) == 1:
        s = shapes[0]
        ok = (len(s) == 4 and s[3] == n) or (n == 1 and (len(s) == 3 or s[3:] == (1,)))
        if not ok:
            want = f"a 4D image with {n} volumes ({', '.join(channel_names)})"
            if n == 1:
                want = "a 3D image"
            raise MedtuneInputError(
                f"{case.files[0]}: expected {want} or channel files {case.case_id}_0000..., found shape {s}"
            )
        return
    for f, s in zip(case.files, shapes):
        if not (len(s) == 3 or (len(s) == 4 and s[3] == 1)):
            raise MedtuneInputError(f"{f}: expected a 3D channel image, found shape {s}")
        if s[:3] != shapes[0][:3]:
            raise MedtuneInputError(
                f"{f}: expected the shape of {case.files[0].name} {shapes[0][:3]}, found {s[:3]}"
            )


def output_paths(out_dir: Path, case_id: str, save_probabilities: bool) -> list[Path]:
    """Files written for one case: `CASE.nii.gz` (and `CASE_probs.nii.gz`)."""
    paths = [out_dir / f"{case_id}{OUT_ENDING}"]
    if save_probabilities:
        paths.append(out_dir / f"{case_id}{PROBS_SUFFIX}{OUT_ENDING}")
    return paths


def _check_out(
    out_dir: Path, inputs, cases: list[InputCase], save_probabilities: bool, overwrite: bool
) -> None:
    out = out_dir.resolve()
    files = {f.resolve() for c in cases for f in c.files}
    folders = {f.parent for f in files} | {f for f in files if f.is_dir()}  # DICOM series
    for p in [inputs] if isinstance(inputs, str | os.PathLike) else inputs:
        if Path(p).is_dir():
            folders.add(Path(p).resolve())
    if out in files:
        raise MedtuneInputError(f"--out {out_dir}: expected an output folder, found an input file")
    if out in folders:
        raise MedtuneInputError(
            f"--out {out_dir}: expected a folder other than the input folder {out} "
            "(predict never writes beside its inputs)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise MedtuneInputError(f"--out {out_dir}: expected a folder, found a file")
    planned = [p for c in cases for p in output_paths(out_dir, c.case_id, save_probabilities)]
    clash = [p for p in planned if p.resolve() in files]
    if clash:
        raise MedtuneInputError(f"{clash[0]}: expected a new output, found an input file")
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        raise MedtuneInputError(
            f"{existing[0]}: expected no existing output, found a file ({len(existing)} of "
            f"{len(planned)} outputs exist); pass --overwrite to replace them"
        )


def replaced_note(case_id: str, meta: dict) -> str | None:
    """The stderr note of a case whose non-finite voxels were replaced, None when none were."""
    per_file = meta.get("nonfinite_replaced") or {}
    if not per_file:
        return None
    files = ", ".join(f"{n} in {Path(f).name}" for f, n in per_file.items())
    return (
        f"{case_id}: replaced {sum(per_file.values())} NaN/Inf voxel(s) by 0 after "
        f"normalisation ({files})"
    )


def write_case_prediction(
    predictor: Predictor | EnsemblePredictor,
    case: InputCase,
    out_dir: Path,
    tta: str = "none",
    save_probabilities: bool = False,
    progress: bool = False,
    nonfinite: str = "error",
) -> list[Path]:
    """Predict one case and write its outputs; returns the written paths (labels first)."""
    from medtune.data.preprocess import restore_to_original

    pred = predictor.infer_case(case.files, tta=tta, progress=progress, nonfinite=nonfinite)
    note = replaced_note(case.case_id, pred.meta)
    if note:
        print(note, file=sys.stderr, flush=True)
    probs, idx, meta = pred.probs, pred.labels, pred.meta
    del pred
    paths = output_paths(out_dir, case.case_id, save_probabilities)
    reference = case.files[0]
    if reference.is_dir():  # a DICOM series: its geometry as read, no header to copy
        reference = Geometry(tuple(meta["original_shape"]), np.asarray(meta["original_affine"]))
    if save_probabilities:
        restored = restore_to_original(probs.numpy(), meta)  # (K, X, Y, Z)
        del probs
        write_like(
            np.moveaxis(restored, 0, -1).astype(np.float32, copy=False),
            reference,
            paths[1],
            "medtune class probabilities (X, Y, Z, K)",
        )
        del restored
    else:
        del probs
    labels = restore_labels(idx, predictor.props.source_lut(), meta, wide_dtype=np.int16)
    write_like(labels, reference, paths[0], "medtune predict labels")
    return paths


def predict_files(
    adapter_or_run_dir: str | Path | Predictor | EnsemblePredictor | list,
    inputs,
    out_dir: str | Path,
    device: str | None = "auto",
    tta: str = "none",
    save_probabilities: bool = False,
    overwrite: bool = False,
    *,
    progress: bool = True,
    sw_batch_size: int | None = None,
    nonfinite: str = "error",
    options: InferenceOptions | None = None,
) -> list[Path]:
    """`medtune predict`: write a label map per input case into `out_dir`.

    Args:
        adapter_or_run_dir: a run directory, an adapter folder, a loaded `Predictor`, or a
            list of runs / adapter folders (a fold ensemble: the mean of their softmax, see
            `medtune.inference.ensemble`) or a loaded `EnsemblePredictor`.
        inputs: a NIfTI file or folder (or a list of them); see the module docstring.
        out_dir: output folder (created); never an input folder.
        device: "auto", "cpu" or "cuda" (a clear error when CUDA is missing).
        tta: "none" or "flip8".
        save_probabilities: also write `CASE_probs.nii.gz` (float32, `(X, Y, Z, K)`).
        overwrite: replace existing outputs instead of refusing.
        sw_batch_size: windows per model call (default: automatic, see `InferenceOptions`).
        options: `InferenceOptions` (window, overlap, batch, precision, fast, BatchNorm
            folding) for a model loaded here; see `medtune.inference.options`.
        nonfinite: "error" (NaN / Inf input voxels are refused, naming the file and the count)
            or "zero" (replaced by 0 after normalisation; a note on stderr says how many).

    Returns:
        The label map paths `OUT/CASE.nii.gz`, in case order.
    """
    from medtune.data.preprocess import NONFINITE
    from medtune.inference.sliding_window import TTA_MODES

    if tta not in TTA_MODES:
        raise MedtuneInputError(f"--tta: expected one of {', '.join(TTA_MODES)}, found {tta!r}")
    if nonfinite not in NONFINITE:
        raise MedtuneInputError(
            f"--nonfinite: expected one of {', '.join(NONFINITE)}, found {nonfinite!r}"
        )
    out = Path(out_dir)
    models = adapter_or_run_dir
    if isinstance(models, list | tuple) and len(models) == 1:
        models = models[0]
    if isinstance(models, Predictor | EnsemblePredictor):
        predictor = models
        channel_names = list(predictor.props.channel_names)
        cases = find_cases(inputs, channel_names)
    elif isinstance(models, list | tuple):  # an ensemble: runs checked before any model loads
        predictor = None
        channel_names = list(ensemble_props(list(models)).channel_names)
        cases = find_cases(inputs, channel_names)
    else:
        # Inputs and outputs are checked before the model is loaded; the channel names come
        # from the adapter's config, which is cheap to read.
        from medtune.artifacts.adapters import read_adapter_config
        from medtune.artifacts.run_dir import resolve_model_dir

        adapter_dir, _ = resolve_model_dir(models)
        ds = (read_adapter_config(adapter_dir).get("extra") or {}).get("dataset") or {}
        channel_names = list(ds.get("channel_names") or [])
        predictor = None
        if not channel_names:
            predictor = load_predictor(models, device, sw_batch_size, options)
            channel_names = list(predictor.props.channel_names)
        cases = find_cases(inputs, channel_names)
    for case in cases:
        _check_headers(case, channel_names)
    _check_out(out, inputs, cases, save_probabilities, overwrite)
    if predictor is None:
        predictor = load_predictor(models, device, sw_batch_size, options)
    out.mkdir(parents=True, exist_ok=True)

    written = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        paths = write_case_prediction(
            predictor, case, out, tta, save_probabilities, progress=progress, nonfinite=nonfinite
        )
        written.append(paths[0])
        if progress:
            print(
                f"[{i}/{len(cases)}] {case.case_id}: {paths[0]} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return written
