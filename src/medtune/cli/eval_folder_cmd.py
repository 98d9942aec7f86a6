"""`medtune evaluate-folder`: score label maps written by any tool against references.

stdout: the summary's Markdown table, or with `--json` only JSON (the summary plus a
`per_case` list of rows). stderr: progress, one line per missing or mismatched case, notes.
Missing or mismatched cases exit 2 unless `--skip-missing`. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medtune.cli.infer_cmds import add_hd95_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-folder",
        help="score label maps from any tool against reference label maps",
        description=(
            "Dice, HD95 and NSD per case and region of dataset.json for every reference "
            "REF_DIR/CASE.nii.gz against PRED_DIR/CASE.nii.gz, in the reference's voxel grid "
            "and spacing (the metric code of medtune evaluate). A missing or mismatched case "
            "(file, shape, affine, NaN, labels outside dataset.json) is one line on stderr and "
            "exit 2, unless --skip-missing."
        ),
    )
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="predicted label maps")
    p.add_argument("ref_dir", type=Path, metavar="REF_DIR", help="reference label maps")
    p.add_argument(
        "--dataset",
        type=Path,
        metavar="DATASET_JSON",
        required=True,
        help="dataset.json giving labels and regions",
    )
    add_hd95_option(p)
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=1.0,
        metavar="MM",
        help="tolerance of the normalised surface Dice in mm (default 1)",
    )
    for flag, what in (("--pred-labels", "PRED_DIR"), ("--ref-labels", "REF_DIR")):
        p.add_argument(
            flag,
            choices=("dataset", "source"),
            default="dataset",
            help=f"label values of {what}: dataset.json's labels (default) or the source "
            "convention of its medtune.source_labels, which medtune predict writes (BraTS ET 4)",
        )
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="also write per_case.csv, summary.json, summary.md"
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="score the cases that match and list the skipped ones instead of failing",
    )
    p.set_defaults(func=run_evaluate_folder)


def run_evaluate_folder(args: argparse.Namespace) -> int:
    from medtune.evaluation.folder import CaseMismatchError, evaluate_folder
    from medtune.evaluation.report import markdown_table

    try:
        summary, rows = evaluate_folder(
            args.pred_dir,
            args.ref_dir,
            args.dataset,
            hd95=args.hd95,
            nsd_tolerance_mm=args.nsd_tolerance,
            out=args.out,
            skip_missing=args.skip_missing,
            progress=True,
            pred_labels=args.pred_labels,
            ref_labels=args.ref_labels,
        )
    except CaseMismatchError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise
    for line in summary["skipped"].values():
        print(f"skipped {line}", file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps({**summary, "per_case": rows}, indent=2) + "\n")
    else:
        sys.stdout.write(markdown_table(summary))
    where = f"; reports in {summary['out_dir']}" if "out_dir" in summary else ""
    print(
        f"scored {summary['n_cases']} case(s), skipped {summary['n_skipped']} "
        f"(hd95 {summary['hd95']}, nsd at {summary['nsd_tolerance_mm']:g} mm){where}",
        file=sys.stderr,
    )
    return 0
