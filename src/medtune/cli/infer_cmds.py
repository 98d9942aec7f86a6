"""Inference subcommands: `evaluate` (metrics over labelled cases) and `predict` (label maps).

Results go to stdout (the evaluation's Markdown table; the written paths); progress and notes
to stderr. Bad input raises `MedtuneInputError` (one line, exit 2). See docs/inference.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_hd95_option(parser: argparse.ArgumentParser) -> None:
    """`--hd95 directed|pooled`, shared by `evaluate` and `evaluate-folder`."""
    parser.add_argument(
        "--hd95",
        choices=("directed", "pooled"),
        default="directed",
        help="HD95 definition: directed = max of the two directed 95th percentiles (MONAI, "
        "BraTS; default), pooled = 95th percentile of both directions together (medpy, the "
        "Med-Tuning paper)",
    )


def _add_nonfinite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nonfinite",
        choices=("error", "zero"),
        default="error",
        help="NaN / Inf image voxels: refuse them (default), or replace them by 0 after "
        "normalisation (statistics over the finite voxels; stderr says how many)",
    )


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Sliding-window flags of `predict` and `evaluate` (`medtune.inference.options`)."""
    parser.add_argument(
        "--overlap",
        type=float,
        metavar="F",
        help="sliding-window overlap in [0, 1) (default: the run's, paper 2/3)",
    )
    parser.add_argument(
        "--sw-batch-size",
        type=int,
        metavar="N",
        help="windows per model call (default: about 2^19 voxels per call on CUDA, 2^17 on the CPU)",
    )
    parser.add_argument(
        "--window",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="sliding window (default: the training crop); deeper than the crop needs the "
        "resample depth filter",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="model precision (autocast; default bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="overlap 0.25 and a window twice the training depth (when the model accepts "
        "it); explicit flags win",
    )


def _options(args: argparse.Namespace):
    from medtune.inference.options import InferenceOptions

    return InferenceOptions(
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        window=tuple(args.window) if args.window else None,
        precision=args.precision,
        fast=args.fast,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained run (or a fold ensemble) on labelled cases (Dice, HD95, NSD)",
        description=(
            "Sliding-window inference (training crop as window, the run's overlap, CPU "
            "stitching) over the labelled cases of a split, metrics per region of dataset.json "
            "in each label file's own grid; writes per_case.csv, summary.json and summary.md to "
            "--out and prints the Markdown table. Several runs of one dataset (e.g. its folds) "
            "are evaluated as their ensemble (mean softmax), by default on the test cases "
            "(imagesTs + labelsTs); a split holding any case a run trained on is refused."
        ),
    )
    p.add_argument(
        "run_dir",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="run directory of medtune train; several: their ensemble",
    )
    p.add_argument(
        "--data", type=Path, metavar="DIR", required=True, help="labelled dataset folder"
    )
    p.add_argument(
        "--fold", type=int, metavar="K", help="fold of splits_final.json (default: the run's)"
    )
    p.add_argument(
        "--split",
        choices=("val", "train", "all", "test"),
        help="cases of the fold to evaluate, all labelled cases, or the test cases "
        "(imagesTs + labelsTs) (default: val; test for several runs)",
    )
    p.add_argument(
        "--tta",
        choices=("none", "flip8"),
        default="none",
        help="test-time augmentation: flip8 averages the softmax over the 8 axis flips",
    )
    p.add_argument(
        "--postprocess",
        choices=("brats",),
        help="brats: predicted ET under 500 voxels becomes the dataset's non-enhancing core label",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder (default RUN_DIR/eval_<split>_fold<K>, RUN_DIR/eval_test; "
        "several runs: eval_ensemble_<split>... beside the first)",
    )
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=1.0,
        metavar="MM",
        help="tolerance of the normalised surface Dice in mm (default 1)",
    )
    add_hd95_option(p)
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default: cuda when available); stitching stays on the CPU",
    )
    _add_nonfinite(p)
    _add_inference_options(p)
    p.set_defaults(func=run_evaluate)

    q = sub.add_parser(
        "predict",
        help="write label maps for new images in their own geometry",
        description=(
            "Predict CASE_0000.nii.gz... channel files, 4D NIfTI files, folders of cases, or "
            "DICOM case folders (one series, or one sub-folder per channel named 0000... or by "
            "channel name); writes OUT/CASE.nii.gz with exactly the input's shape, affine and "
            "spacing (a DICOM series' geometry as NIfTI), in the source dataset's label "
            "convention. Several runs of one dataset (e.g. its folds) predict as an ensemble: "
            "the mean of their softmax. Never writes into an input folder."
        ),
    )
    q.add_argument(
        "model_dir",
        type=Path,
        nargs="+",
        metavar="RUN_OR_ADAPTER_DIR",
        help="run directory (uses its adapter/) or adapter folder; several: their ensemble",
    )
    q.add_argument(
        "--input",
        type=Path,
        metavar="FILE_OR_DIR",
        required=True,
        help="image file or folder (NIfTI, or folders of DICOM cases)",
    )
    q.add_argument("--out", type=Path, metavar="DIR", required=True, help="output folder")
    q.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default: cuda when available, else cpu)",
    )
    q.add_argument(
        "--tta", choices=("none", "flip8"), default="none", help="test-time augmentation"
    )
    q.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write OUT/CASE_probs.nii.gz (float32 (X, Y, Z, K), one volume per class)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_nonfinite(q)
    _add_inference_options(q)
    q.set_defaults(func=run_predict)


def run_evaluate(args: argparse.Namespace) -> int:
    from medtune.evaluation.evaluate import evaluate_run
    from medtune.evaluation.report import markdown_table

    options = _options(args)
    summary = evaluate_run(
        args.run_dir if len(args.run_dir) > 1 else args.run_dir[0],
        args.data,
        fold=args.fold,
        split=args.split,
        tta=args.tta,
        postprocess=args.postprocess,
        out=args.out,
        device=args.device,
        nsd_tolerance_mm=args.nsd_tolerance,
        hd95=args.hd95,
        nonfinite=args.nonfinite,
        options=options,
    )
    sys.stdout.write(markdown_table(summary))
    print(
        f"evaluated {summary['n_cases']} case(s) ({summary['split']}"
        + (f", fold {summary['fold']}" if summary["fold"] is not None else "")
        + (f", ensemble of {len(summary['runs'])} runs" if "runs" in summary else "")
        + ", "
        f"tta {args.tta}, postprocess {summary['postprocess']}, hd95 {summary['hd95']}, "
        f"nsd at {summary['nsd_tolerance_mm']:g} mm) in {summary['wall_time_s']:.1f} s; "
        f"reports in {summary['out_dir']}"
        + (
            f"; {summary['nonfinite_replaced_voxels']} NaN/Inf voxel(s) replaced by 0"
            if summary.get("nonfinite_replaced_voxels")
            else ""
        ),
        file=sys.stderr,
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from medtune.inference.predict import predict_files

    options = _options(args)
    paths = predict_files(
        args.model_dir if len(args.model_dir) > 1 else args.model_dir[0],
        args.input,
        args.out,
        device=args.device,
        tta=args.tta,
        save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
        nonfinite=args.nonfinite,
        options=options,
    )
    for p in paths:
        print(p)
    print(f"wrote {len(paths)} label map(s) to {args.out}", file=sys.stderr)
    return 0
