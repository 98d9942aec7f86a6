"""`medtune evaluate-folder`: score label maps written by any tool (nnU-Net, MONAI, medtune)
against reference label maps, per case and region, with the metric code of `medtune evaluate`.

Cases: every NIfTI file of the reference folder is one case (its name without `.nii.gz` /
`.nii`); its prediction is the file of the same name in the prediction folder (either ending).
Labels and regions come from a dataset.json (`medtune.data.dataset.read_dataset_props`), the
voxel spacing of each case from its reference file's header.

Each of these is one line naming the case and the file, and stops the evaluation (exit 2 on the
command line) unless `skip_missing`, which scores the other cases and lists the skipped ones in
the summary (``"skipped": {case: line}``):

- a reference without a prediction, a prediction without a reference, two files of one case;
- a prediction whose shape differs from its reference's, or whose affine differs by more than
  `AFFINE_TOL` (as `medtune check-data`);
- an unreadable file, NaN / Inf or fractional values, labels outside the folder's convention
  (dataset.json's labels, or with `source` its `medtune.source_labels`: what `medtune predict`
  writes).

Header problems are found for every case before any volume is read; without `skip_missing`,
volumes are still read (to list every bad one) but no metric is computed once one is found.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.check import AFFINE_TOL
from medtune.data.io import list_nifti, nifti_geometry, read_label_values, strip_nifti

SKIP_HINT = "--skip-missing scores the other cases"


class CaseMismatchError(MedtuneInputError):
    """Cases that are missing or do not match their reference; `problems` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} case(s) missing or mismatched (first: {self.problems[0]}); "
            f"{SKIP_HINT}"
        )


def _files_by_case(folder: Path, what: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Case id -> NIfTI file of `folder`, and case id -> problem line for a case with two."""
    found: dict[str, list[Path]] = {}
    for path in list_nifti(folder):
        found.setdefault(strip_nifti(path), []).append(path)
    problems = {
        case: f"{case}: expected one {what} file, found {len(paths)}: "
        + ", ".join(str(p) for p in paths)
        for case, paths in found.items()
        if len(paths) > 1
    }
    return {c: paths[0] for c, paths in found.items() if len(paths) == 1}, problems


def pair_cases(
    pred_dir: Path, ref_dir: Path, file_ending: str = ".nii.gz"
) -> tuple[list[tuple[str, Path, Path]], dict[str, str]]:
    """(case id, prediction, reference) of every case with both files, sorted by case id, and
    case id -> problem line for the others (one file missing, or two files for one case)."""
    for folder, what in ((pred_dir, "PRED_DIR"), (ref_dir, "REF_DIR")):
        if not folder.is_dir():
            raise MedtuneInputError(f"{what} {folder}: expected a folder, found none")
    preds, dup_pred = _files_by_case(pred_dir, "prediction")
    refs, dup_ref = _files_by_case(ref_dir, "reference")
    if not refs and not dup_ref:
        raise MedtuneInputError(
            f"REF_DIR {ref_dir}: expected reference label files (*.nii.gz or *.nii), found none"
        )
    problems = {**dup_pred, **dup_ref}
    pairs = []
    for case in sorted(set(preds) | set(refs)):
        if case in problems:
            continue
        if case not in preds:
            problems[case] = (
                f"{case}: expected a prediction {pred_dir / (case + file_ending)} for the "
                f"reference {refs[case]}, found none"
            )
        elif case not in refs:
            problems[case] = (
                f"{case}: expected a reference {ref_dir / (case + file_ending)} for the "
                f"prediction {preds[case]}, found none"
            )
        else:
            pairs.append((case, preds[case], refs[case]))
    return pairs, dict(sorted(problems.items()))


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _check_grid(case: str, pred: Path, ref: Path) -> str | tuple[float, float, float]:
    """The reference's voxel spacing (mm), or one line when the prediction's grid (shape,
    affine) is not the reference's; reads headers only."""
    try:
        ref_shape, ref_affine, spacing = nifti_geometry(ref)
        shape, affine, _ = nifti_geometry(pred)
    except MedtuneInputError as exc:
        return f"{case}: {exc}"
    if _spatial(shape) != _spatial(ref_shape):
        return f"{case}: {pred}: expected the shape of {ref} {ref_shape}, found {shape}"
    diff = float(np.abs(affine - ref_affine).max())
    if diff > AFFINE_TOL:
        return (
            f"{case}: {pred}: expected the affine of {ref} (tolerance {AFFINE_TOL}), "
            f"found a difference of {diff:.4g}"
        )
    return spacing


LABEL_CONVENTIONS = ("dataset", "source")
"""How a folder's label values read: dataset.json's `labels`, or the source dataset's convention
that `medtune predict` writes (dataset.json's `medtune.source_labels`, e.g. BraTS ET 4)."""


class _Convention:
    """Reads label maps written in one convention into dataset.json's label values."""

    def __init__(self, props, name: str, flag: str):
        dataset_values = {0, *(v for v in props.labels.values() if v != 0)}
        source = {d: s for d, s in props.source_labels.items() if d != 0}
        self.name, self.flag = name, flag
        if name == "source":
            self.allowed = {0, *source.values()}
            self.to_dataset = {s: d for d, s in source.items() if s != d}
            self.other = dataset_values - self.allowed
        else:
            self.allowed, self.to_dataset = dataset_values, {}
            self.other = set(source.values()) - dataset_values

    def read(self, case: str, path: Path):
        """The label map `(X, Y, Z)` in dataset.json's values, or one problem line."""
        try:
            arr = read_label_values(path)
        except MedtuneInputError as exc:
            return f"{case}: {exc}"
        bad = sorted(set(np.unique(arr).tolist()) - self.allowed)
        if bad:
            where = (
                "dataset.json"
                if self.name == "dataset"
                else "the source convention of dataset.json"
            )
            hint = ""
            if set(bad) <= self.other:
                other = "source" if self.name == "dataset" else "dataset"
                hint = f" (values of the {other} convention: pass {self.flag} {other}"
                hint += (
                    "; medtune predict writes the source convention)" if other == "source" else ")"
                )
            return (
                f"{case}: {path}: expected the label values of {where} {sorted(self.allowed)}, "
                f"found {bad}{hint}"
            )
        if self.to_dataset:
            out = arr.copy()
            for src, dst in self.to_dataset.items():
                out[arr == src] = dst
            arr = out
        return arr


def _score_cases(
    checked: list[tuple[str, Path, Path, tuple[float, float, float]]],
    props,
    problems: dict[str, str],
    *,
    hd95: str,
    nsd_tolerance_mm: float,
    skip_missing: bool,
    progress: bool,
    pred_labels: str = "dataset",
    ref_labels: str = "dataset",
) -> list[dict[str, Any]]:
    """Report rows of the cases (case, prediction, reference, spacing) whose values pass;
    records the others in `problems`. Once a problem is known and not `skip_missing`, cases
    are only checked, not scored."""
    from tqdm import tqdm

    from medtune.evaluation.evaluate import MEAN_REGION
    from medtune.evaluation.metrics import compute_case_metrics
    from medtune.evaluation.report import case_row

    known = sorted(v for v in props.labels.values() if v != 0)
    pred_conv = _Convention(props, pred_labels, "--pred-labels")
    ref_conv = _Convention(props, ref_labels, "--ref-labels")
    mean_region = MEAN_REGION if len(props.regions) > 1 else None
    rows = []
    bar = tqdm(checked, desc="evaluate-folder", unit="case", file=sys.stderr, disable=not progress)
    for case, pred, ref, spacing in bar:
        bar.set_postfix_str(case)
        got = [conv.read(case, path) for conv, path in ((pred_conv, pred), (ref_conv, ref))]
        bad = [g for g in got if isinstance(g, str)]
        if bad:
            problems[case] = bad[0]
            continue
        if problems and not skip_missing:
            continue  # only listing what is wrong from here on
        metrics = compute_case_metrics(
            got[0],
            got[1],
            props.regions,
            spacing,
            nsd_tolerance_mm,
            hd95=hd95,
            mean_region=mean_region,
            known_labels=known,
        )
        rows.append(case_row(case, metrics))
    bar.close()
    return rows


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: str | Path,
    *,
    hd95: str = "directed",
    nsd_tolerance_mm: float = 1.0,
    out: str | Path | None = None,
    skip_missing: bool = False,
    progress: bool = False,
    pred_labels: str = "dataset",
    ref_labels: str = "dataset",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Dice, HD95 (mm) and NSD per case and region of the predictions in `pred_dir` against the
    references in `ref_dir`, regions from `dataset_json` (plus their mean when there are
    several, as `medtune evaluate`).

    `pred_labels` / `ref_labels`: the label convention of each folder (`LABEL_CONVENTIONS`);
    `source` files are mapped to dataset.json's values before scoring (`medtune predict`
    writes the source convention, e.g. BraTS ET 4 where a converted dataset has 3).
    Writes `per_case.csv`, `summary.json` and `summary.md` into `out` when given.

    Returns:
        (summary, per-case rows): the summary in `medtune.evaluation.summarize` format plus
        the folders, `hd95`, `nsd_tolerance_mm`, `n_skipped` and `skipped` (case -> line).

    Raises:
        CaseMismatchError: some cases are missing or mismatched and not `skip_missing`.
    """
    from medtune.data.dataset import read_dataset_props
    from medtune.evaluation.metrics import HD95_MODES
    from medtune.evaluation.report import summarize, write_reports

    if hd95 not in HD95_MODES:
        raise MedtuneInputError(f"--hd95: expected one of {', '.join(HD95_MODES)}, found {hd95!r}")
    for flag, value in (("--pred-labels", pred_labels), ("--ref-labels", ref_labels)):
        if value not in LABEL_CONVENTIONS:
            raise MedtuneInputError(
                f"{flag}: expected one of {', '.join(LABEL_CONVENTIONS)}, found {value!r}"
            )
    if not (np.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise MedtuneInputError(
            f"--nsd-tolerance: expected a number of mm >= 0, found {nsd_tolerance_mm}"
        )
    t0 = time.perf_counter()
    props = read_dataset_props(dataset_json)
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    pairs, problems = pair_cases(pred_dir, ref_dir, props.file_ending)
    checked = []
    for case, pred, ref in pairs:
        got = _check_grid(case, pred, ref)
        if isinstance(got, str):
            problems[case] = got
        else:
            checked.append((case, pred, ref, got))
    rows = _score_cases(
        checked,
        props,
        problems,
        hd95=hd95,
        nsd_tolerance_mm=nsd_tolerance_mm,
        skip_missing=skip_missing,
        progress=progress,
        pred_labels=pred_labels,
        ref_labels=ref_labels,
    )
    if problems and not skip_missing:
        raise CaseMismatchError([problems[c] for c in sorted(problems)])
    if not rows:
        raise MedtuneInputError(
            f"{pred_dir}: expected at least one case to score against {ref_dir}, found none "
            f"({len(problems)} skipped)"
        )
    summary = summarize(rows)
    summary.update(
        {
            "predictions": str(pred_dir.resolve()),
            "references": str(ref_dir.resolve()),
            "dataset": str(Path(dataset_json).resolve()),
            "geometry": "each reference file's voxel grid and spacing",
            "hd95": hd95,
            "nsd_tolerance_mm": nsd_tolerance_mm,
            "pred_labels": pred_labels,
            "ref_labels": ref_labels,
            "n_skipped": len(problems),
            "skipped": dict(sorted(problems.items())),
            "wall_time_s": round(time.perf_counter() - t0, 2),
        }
    )
    if out is not None:
        write_reports(rows, summary, out)
        summary["out_dir"] = str(Path(out))
    return summary, rows
