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
from medtune.inference.options import InferenceOptions
from medtune.inference.predictor import Predictor, load_predictor, restore_labels

SPLITS = ("val", "train", "all", "test")
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
    """Case ids of `split` ("val", "train" or "all") of fold `fold` of dataset `info`, or its
    test cases ("test": `imagesTs` with `labelsTs`, every one labelled).

    Folds come from the first `splits_final.json` found in the dataset folder or `split_dirs`
    (e.g. the run's cache); when there is none they are made in memory with `make_splits`
    (`num_folds`, `split_seed`), exactly as training makes them, and not written.
    """
    from medtune.data.splits import find_splits, select_fold

    if split not in SPLITS:
        raise MedtuneInputError(f"--split: expected one of {', '.join(SPLITS)}, found {split!r}")
    if split == "test":
        return _test_cases(info)
    ids = [c.case_id for c in info.cases]
    if split == "all":
        return ids
    splits, where = find_splits(ids, [Path(info.root), *split_dirs], num_folds, split_seed)
    chosen = list(select_fold(splits, fold, where, "--fold")[split])
    if not chosen:
        raise MedtuneInputError(f"--split {split} of fold {fold}: expected cases, found none")
    return chosen


def _test_cases(info) -> list[str]:
    root = Path(info.root)
    if not info.test_cases:
        raise MedtuneInputError(
            f"--split test: expected test cases in {root / 'imagesTs'} with labels in "
            f"{root / 'labelsTs'}, found none"
        )
    unlabelled = [c for c in info.test_cases if c.label is None]
    if unlabelled:
        c = unlabelled[0]
        raise MedtuneInputError(
            f"{root / 'labelsTs' / (c.case_id + info.props.file_ending)}: expected the label of "
            f"test case {c.case_id} (--split test scores imagesTs against labelsTs), found none "
            f"({len(unlabelled)} of {len(info.test_cases)} test cases unlabelled)"
        )
    return [c.case_id for c in info.test_cases]


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


def _protocol(predictor) -> dict[str, Any]:
    """Window and overlap of the model (of each model of an ensemble) for the summary."""
    if hasattr(predictor, "protocol"):
        return predictor.protocol()
    return {"window": list(predictor.window), "overlap": round(predictor.overlap, 6)}


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
    test: bool = False,
) -> dict[str, Any]:
    """Evaluate `predictor` (a `Predictor` or an `EnsemblePredictor`) on `case_ids` (default:
    every labelled case) of dataset `data_dir`; with `test`, the ids name its test cases
    (`imagesTs` / `labelsTs`; default: all of them).

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
    if case_ids is not None:
        ids = list(case_ids)
    else:
        ids = _test_cases(info) if test else [c.case_id for c in info.cases]
    cases = [info.case(cid, test=test) for cid in ids]  # unknown ids raise before any work
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
            **_protocol(predictor),
            "slice_axis": predictor.props.slice_axis,
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


def _run_dirs(run_dir) -> list:
    """RunDir of each run given (a path or a list of paths), refusing non-run folders."""
    from medtune.artifacts.run_dir import RunDir

    paths = [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    if not paths:
        raise MedtuneInputError("RUN_DIR: expected at least one run directory, found none")
    runs = [RunDir(Path(p)) for p in paths]
    for run in runs:
        if not run.is_run():
            raise MedtuneInputError(
                f"{run.path}: expected a run directory with {run.config.name} (written by "
                "medtune train), found none"
            )
    return runs


def _split_dirs(cfg, data_dir: Path) -> tuple[Path, ...]:
    """Where a run's folds may be written besides the dataset: its cache (same dataset only),
    then the default cache beside the dataset."""
    from medtune.data.preprocess import default_cache_dir

    dirs = []
    same_data = cfg.data.root and Path(cfg.data.root).resolve() == Path(data_dir).resolve()
    if same_data and cfg.data.cache:
        dirs.append(Path(cfg.data.cache))
    dirs.append(default_cache_dir(data_dir))
    return tuple(dirs)


def training_cases(run, cfg, info, data_dir: Path) -> set[str]:
    """The cases run `run` trained on: `train_summary.json`'s `train_cases` and, when `data_dir`
    is the run's dataset, the training cases of its fold; neither known raises one line."""
    trained: set[str] = set()
    known = False
    if run.summary.is_file():
        summary = run.read_summary()
        if isinstance(summary, dict) and "train_cases" in summary:
            trained |= {str(c) for c in summary["train_cases"]}
            known = True
    if cfg.data.root and Path(cfg.data.root).resolve() == Path(data_dir).resolve():
        trained |= set(
            select_cases(
                info, "train", cfg.data.fold, cfg.data.num_folds, cfg.data.split_seed,
                _split_dirs(cfg, data_dir),
            )
        )  # fmt: skip
        known = True
    if not known:
        raise MedtuneInputError(
            f"{run.summary}: expected the run's training cases (train_summary.json of a "
            f"finished run, or its dataset {cfg.data.root} as --data), found neither"
        )
    return trained


def refuse_overlap(ids: list[str], runs, cfgs, info, data_dir: Path, split: str) -> None:
    """Raise (one line) when a case of `ids` is one that any of `runs` trained on."""
    for run, cfg in zip(runs, cfgs):
        both = sorted(set(ids) & training_cases(run, cfg, info, data_dir))
        if both:
            raise MedtuneInputError(
                f"--split {split}: expected cases that no run trained on, found {len(both)} "
                f"of the training cases of {run.path} (e.g. {', '.join(both[:3])}); score "
                "an ensemble of folds on the test cases (imagesTs + labelsTs, --split test)"
            )


def evaluate_run(
    run_dir,
    data_dir: str | Path,
    fold: int | None = None,
    split: str | None = None,
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
    options: InferenceOptions | None = None,
) -> dict[str, Any]:
    """`medtune evaluate`: evaluate the best adapter of run `run_dir` on dataset `data_dir`;
    a list of several runs evaluates their ensemble (the mean softmax, see
    `medtune.inference.ensemble`).

    Args:
        run_dir: run directory written by `medtune train` (`config.yaml` + `adapter/`), or a
            list of them (e.g. the folds of one dataset).
        data_dir: labelled dataset folder (nnU-Net v2 raw or MSD layout).
        fold: fold of `splits_final.json` (default: the (first) run's `data.fold`).
        split: "val", "train", "all" (every labelled case) or "test" (`imagesTs` scored
            against `labelsTs`); default "val" for one run, "test" for several. With several
            runs (any split) or with "test", a case any run trained on (`train_summary.json`'s
            `train_cases`, and its fold's training cases) is refused.
        tta: "none" or "flip8".
        postprocess: None or "brats".
        out: report folder (default `RUN_DIR/eval_<split>_fold<K>`, `RUN_DIR/eval_test`; for
            several runs the same names beside them, `eval_ensemble_<split>...`).
        device: "auto", "cpu" or "cuda" for the model; stitching is on the CPU.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        hd95: "directed" (max of the two directed 95th percentiles) or "pooled" (medpy's).
        sw_batch_size: windows per model call (default: automatic, see `InferenceOptions`).
        options: `InferenceOptions` (window, overlap, batch, precision, fast, BatchNorm
            folding) for a model loaded here; see `medtune.inference.options`.
        nonfinite: "error" or "zero" (NaN / Inf image voxels replaced by 0 after normalisation).

    Returns:
        The summary written to `summary.json` (plus `out_dir`).
    """
    from medtune.data.dataset import load_dataset
    from medtune.training.config import load_config

    runs = _run_dirs(run_dir)
    ensemble = len(runs) > 1
    if ensemble:  # the runs' data must match: checked before anything is loaded
        from medtune.inference.ensemble import ensemble_props

        ensemble_props([r.path for r in runs])
    split = split or ("test" if ensemble else "val")
    cfgs = [load_config(r.config) for r in runs]
    fold = cfgs[0].data.fold if fold is None else int(fold)
    info = load_dataset(data_dir)
    data = cfgs[0].data
    ids = select_cases(
        info, split, fold, data.num_folds, data.split_seed, _split_dirs(cfgs[0], Path(data_dir))
    )
    if ensemble or split == "test":
        refuse_overlap(ids, runs, cfgs, info, Path(data_dir), split)
    paths = [r.path for r in runs]
    predictor = load_predictor(paths if ensemble else paths[0], device, sw_batch_size, options)
    fold_of_split = None if split == "test" else fold
    if out is None:
        out = runs[0].eval_dir(split, fold_of_split)
        if ensemble:
            out = runs[0].path.parent / f"eval_ensemble_{out.name[len('eval_') :]}"
    extra: dict[str, Any] = {"split": split, "fold": fold_of_split}
    if ensemble:
        extra["runs"] = [str(p.resolve()) for p in paths]
    else:
        extra["run_dir"] = str(paths[0].resolve())
    return evaluate_predictor(
        predictor,
        data_dir,
        ids,
        Path(out),
        tta=tta,
        postprocess=postprocess,
        nsd_tolerance_mm=nsd_tolerance_mm,
        hd95=hd95,
        summary_extra=extra,
        progress=progress,
        info=info,
        nonfinite=nonfinite,
        test=split == "test",
    )
