"""`medtune evaluate`: sliding-window inference over labelled cases, metrics in the original
geometry, per-case CSV + summary JSON + Markdown table.

Protocol (see docs/inference.md):

1. Cases: the validation (or training) cases of fold K from `splits_final.json` (the dataset
   folder's, else the one training wrote into its cache, else the same seeded folds made in
   memory), or every labelled case with ``split="all"``.
2. Each case is preprocessed from its raw files exactly as `medtune predict` does (the model's
   orientation, spacing and normalisation), predicted by MONAI sliding windows (the training
   crop as window, the run's overlap, paper 2/3) with stitching on the CPU, optionally with
   8-way flip TTA, then mapped back to the label file's voxel grid (crop, resampling and
   reorientation undone).
3. Optional BraTS post-processing in that grid (predicted ET under 500 voxels becomes the
   dataset's non-enhancing core label).
4. Dice, HD95 (mm, from the label file's voxel spacing; `hd95` "directed" or "pooled", see
   `medtune.evaluation.metrics`) and NSD per region of dataset.json, plus their mean over
   regions when there are several (KiTS' "composite").
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.io import read_label_map
from medtune.inference.predictor import Predictor, load_predictor, restore_labels

SPLITS = ("val", "train", "all")
POSTPROCESS = ("brats",)
MEAN_REGION = "mean"
BRATS_MIN_VOXELS = 500


def select_cases(
    info,
    split: str,
    fold: int,
    num_folds: int = 5,
    split_seed: int = 12345,
    split_dirs: tuple[Path, ...] = (),
) -> list[str]:
    """Case ids of `split` ("val", "train" or "all") of fold `fold` of dataset `info`.

    Folds come from the first `splits_final.json` found in the dataset folder or `split_dirs`
    (e.g. the run's cache); when there is none they are made in memory with `make_splits`
    (`num_folds`, `split_seed`), exactly as training makes them, and not written.
    """
    from medtune.data.splits import find_splits, select_fold

    if split not in SPLITS:
        raise MedtuneInputError(f"--split: expected one of {', '.join(SPLITS)}, found {split!r}")
    ids = [c.case_id for c in info.cases]
    if split == "all":
        return ids
    splits, where = find_splits(ids, [Path(info.root), *split_dirs], num_folds, split_seed)
    chosen = list(select_fold(splits, fold, where, "--fold")[split])
    if not chosen:
        raise MedtuneInputError(f"--split {split} of fold {fold}: expected cases, found none")
    return chosen


def _brats_labels(info) -> tuple[int, int]:
    et, netc = info.props.et_label, info.props.netc_label
    if et is None or netc is None:
        raise MedtuneInputError(
            f"--postprocess brats: expected 'et_label' and 'netc_label' in the 'medtune' key of "
            f"{Path(info.root) / 'dataset.json'}, found et_label={et}, netc_label={netc}"
        )
    return int(et), int(netc)


def predict_case_labels(
    predictor: Predictor,
    image_files: list[Path],
    tta: str = "none",
    progress: bool = False,
    nonfinite: str = "error",
    meta: dict[str, Any] | None = None,
) -> np.ndarray:
    """Predicted label map of one case, in the dataset's label values, on the input file's voxel
    grid `(X, Y, Z)` (crop, resampling and reorientation undone). `meta`, when given, receives
    the case's geometry record (with `nonfinite_replaced`)."""
    pred = predictor.infer_case(image_files, tta=tta, progress=progress, nonfinite=nonfinite)
    if meta is not None:
        meta.update(pred.meta)
    return restore_labels(pred.labels, predictor.props.label_values, pred.meta)


def evaluate_predictor(
    predictor: Predictor,
    data_dir: str | Path,
    case_ids: list[str] | None = None,
    out: str | Path | None = None,
    *,
    tta: str = "none",
    postprocess: str | None = None,
    nsd_tolerance_mm: float = 1.0,
    hd95: str = "directed",
    summary_extra: dict[str, Any] | None = None,
    progress: bool = True,
    info=None,
    nonfinite: str = "error",
) -> dict[str, Any]:
    """Evaluate `predictor` on `case_ids` (default: every labelled case) of dataset `data_dir`.

    `info`: the `DatasetInfo` of `data_dir` when the caller has already loaded it.
    `nonfinite`: "error" refuses NaN / Inf image voxels, "zero" replaces them by 0 after
    normalisation (per case in `nonfinite_replaced`, in total in the summary, noted on stderr).

    Writes `per_case.csv`, `summary.json` and `summary.md` into `out` when given. Returns the
    summary (`medtune.evaluation.summarize` format plus the protocol keys, and `out_dir`).
    """
    from medtune.data.dataset import load_dataset
    from medtune.data.preprocess import NONFINITE
    from medtune.evaluation.metrics import HD95_MODES, brats_postprocess, compute_case_metrics
    from medtune.evaluation.report import case_row, summarize, write_reports
    from medtune.inference.predict import replaced_note
    from medtune.inference.sliding_window import TTA_MODES

    if tta not in TTA_MODES:
        raise MedtuneInputError(f"--tta: expected one of {', '.join(TTA_MODES)}, found {tta!r}")
    if nonfinite not in NONFINITE:
        raise MedtuneInputError(
            f"--nonfinite: expected one of {', '.join(NONFINITE)}, found {nonfinite!r}"
        )
    if postprocess is not None and postprocess not in POSTPROCESS:
        raise MedtuneInputError(
            f"--postprocess: expected one of {', '.join(POSTPROCESS)}, found {postprocess!r}"
        )
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise MedtuneInputError(
            f"--nsd-tolerance: expected a number of mm >= 0, found {nsd_tolerance_mm}"
        )
    if hd95 not in HD95_MODES:
        raise MedtuneInputError(f"--hd95: expected one of {', '.join(HD95_MODES)}, found {hd95!r}")
    root = Path(data_dir)
    if info is None:
        if not root.is_dir():
            found = "a file" if root.exists() else "no such folder"
            raise MedtuneInputError(f"--data {root}: expected a dataset folder, found {found}")
        info = load_dataset(root)
    predictor.props.check_compatible(info.props, f"--data {info.root}")
    et_nc = _brats_labels(info) if postprocess == "brats" else None
    ids = list(case_ids) if case_ids is not None else [c.case_id for c in info.cases]
    cases = [info.case(cid) for cid in ids]  # unknown ids raise before any work
    regions = info.props.regions
    known = sorted(v for v in info.props.labels.values() if v != 0)
    mean_region = MEAN_REGION if len(regions) > 1 else None

    from tqdm import tqdm

    t0 = time.perf_counter()
    rows, replaced = [], 0
    bar = tqdm(cases, desc="evaluate", unit="case", file=sys.stderr, disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        tc = time.perf_counter()
        meta: dict[str, Any] = {}
        pred = predict_case_labels(
            predictor, list(case.images), tta, nonfinite=nonfinite, meta=meta
        )
        note = replaced_note(case.case_id, meta)
        if note:
            bar.write(note, file=sys.stderr)
        gt, spacing = read_label_map(case.label, info.props.labels.values())
        if gt.shape != pred.shape:
            raise MedtuneInputError(
                f"{case.label}: expected the image grid {pred.shape}, found {gt.shape} "
                "(run medtune check-data)"
            )
        relabelled = None
        if et_nc is not None:
            n_et = int((pred == et_nc[0]).sum())
            pred = brats_postprocess(pred, et_nc[0], et_nc[1], BRATS_MIN_VOXELS)
            relabelled = n_et - int((pred == et_nc[0]).sum())
        metrics = compute_case_metrics(
            pred,
            gt,
            regions,
            spacing,
            nsd_tolerance_mm,
            hd95=hd95,
            mean_region=mean_region,
            known_labels=known,
        )
        row = case_row(case.case_id, metrics)
        if relabelled is not None:
            row["et_relabelled_voxels"] = relabelled
        if nonfinite != "error":
            row["nonfinite_replaced"] = sum((meta.get("nonfinite_replaced") or {}).values())
            replaced += row["nonfinite_replaced"]
        row["seconds"] = round(time.perf_counter() - tc, 3)
        rows.append(row)
    bar.close()

    summary = summarize(rows)
    summary.update(
        {
            "model": predictor.source,
            "data": str(root.resolve()),
            "geometry": "original (each label file's voxel grid and spacing)",
            "window": list(predictor.window),
            "slice_axis": predictor.props.slice_axis,
            "overlap": round(predictor.overlap, 6),
            "tta": tta,
            "postprocess": postprocess or "none",
            "hd95": hd95,
            "nsd_tolerance_mm": nsd_tolerance_mm,
            "nonfinite": nonfinite,
            "nonfinite_replaced_voxels": replaced,
            "device": str(predictor.device),
            **(summary_extra or {}),
            "wall_time_s": round(time.perf_counter() - t0, 2),
        }
    )
    if out is not None:
        write_reports(rows, summary, out)
        summary["out_dir"] = str(Path(out))
    return summary


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    fold: int | None = None,
    split: str = "val",
    tta: str = "none",
    postprocess: str | None = None,
    out: str | Path | None = None,
    *,
    device: str | None = "auto",
    nsd_tolerance_mm: float = 1.0,
    hd95: str = "directed",
    progress: bool = True,
    sw_batch_size: int | None = None,
    nonfinite: str = "error",
) -> dict[str, Any]:
    """`medtune evaluate`: evaluate the best adapter of run `run_dir` on dataset `data_dir`.

    Args:
        run_dir: run directory written by `medtune train` (`config.yaml` + `adapter/`).
        data_dir: labelled dataset folder (nnU-Net v2 raw or MSD layout).
        fold: fold of `splits_final.json` (default: the run's `data.fold`).
        split: "val", "train" or "all" (every labelled case).
        tta: "none" or "flip8".
        postprocess: None or "brats".
        out: report folder (default `RUN_DIR/eval_<split>_fold<K>`).
        device: "auto", "cpu" or "cuda" for the model; stitching is on the CPU.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        hd95: "directed" (max of the two directed 95th percentiles) or "pooled" (medpy's).
        sw_batch_size: windows per model call (default: the run's `train.sw_batch_size`).
        nonfinite: "error" or "zero" (NaN / Inf image voxels replaced by 0 after normalisation).

    Returns:
        The summary written to `summary.json` (plus `out_dir`).
    """
    from medtune.artifacts.run_dir import RunDir

    run = RunDir(Path(run_dir))
    if not run.is_run():
        raise MedtuneInputError(
            f"{run.path}: expected a run directory with {run.config.name} (written by medtune "
            "train), found none"
        )
    predictor = load_predictor(run.path, device=device, sw_batch_size=sw_batch_size)
    cfg = predictor.run_config
    fold = cfg.data.fold if fold is None else int(fold)
    from medtune.data.dataset import load_dataset
    from medtune.data.preprocess import default_cache_dir

    info = load_dataset(data_dir)
    split_dirs = []
    same_data = cfg.data.root and Path(cfg.data.root).resolve() == Path(data_dir).resolve()
    if same_data and cfg.data.cache:
        split_dirs.append(Path(cfg.data.cache))
    split_dirs.append(default_cache_dir(data_dir))
    ids = select_cases(
        info, split, fold, cfg.data.num_folds, cfg.data.split_seed, tuple(split_dirs)
    )
    out = Path(out) if out is not None else run.eval_dir(split, fold)
    return evaluate_predictor(
        predictor,
        data_dir,
        ids,
        out,
        tta=tta,
        postprocess=postprocess,
        nsd_tolerance_mm=nsd_tolerance_mm,
        hd95=hd95,
        summary_extra={"run_dir": str(run.path.resolve()), "split": split, "fold": fold},
        progress=progress,
        info=info,
        nonfinite=nonfinite,
    )
