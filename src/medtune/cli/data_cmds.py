"""Data subcommands: `phantoms`, `convert`, `check-data`, `preprocess`.

Results go to stdout; progress bars and notes to stderr. Bad input the user can fix raises
`MedtuneInputError` (one line, exit 2); `check-data` prints one line per problem and returns 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medtune.core.errors import MedtuneInputError


def _phantoms(args: argparse.Namespace) -> int:
    from medtune.data.phantoms import write_phantoms

    t0 = time.perf_counter()
    out = write_phantoms(
        args.kind,
        args.cases,
        Path(args.out),
        seed=args.seed,
        shape=args.shape,
        overwrite=args.overwrite,
    )
    from medtune.data.dataset import load_dataset

    info = load_dataset(out)
    print(
        f"wrote {len(info.cases)} {args.kind} phantoms to {out} "
        f"(channels {', '.join(info.props.channel_names)}; labels {info.props.labels}; "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from medtune.data.convert import convert

    out = convert(args.format, Path(args.src), Path(args.out), link=args.link)
    from medtune.data.dataset import load_dataset

    info = load_dataset(out)
    ed = info.props.conventions.get("edition", "")
    print(
        f"converted {len(info.cases)} training and {len(info.test_cases)} test cases "
        f"({args.format}{' ' + ed if ed else ''}) to {out}; labels {info.props.labels}; "
        f"regions {info.props.regions}"
    )
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from medtune.data.check import check_dataset

    info, problems = check_dataset(Path(args.dataset), progress=True)
    if problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 2
    assert info is not None
    print(
        f"ok: {args.dataset}: {len(info.cases)} training cases, {len(info.test_cases)} test cases, "
        f"{info.props.num_channels} channel(s) ({', '.join(info.props.channel_names)}), modality {info.props.modality}, "
        f"labels {info.props.labels}, regions {info.props.regions}"
    )
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from medtune.data.preprocess import preprocess_dataset, read_props

    if args.workers < 1:
        raise MedtuneInputError(f"--workers: expected >= 1, found {args.workers}")
    t0 = time.perf_counter()
    cache, stats = preprocess_dataset(
        Path(args.dataset),
        Path(args.out),
        workers=args.workers,
        return_stats=True,
        slice_axis=args.slice_axis,
    )
    print(
        f"cache {cache}: {stats['done']} case(s) preprocessed, {stats['skipped']} up to date, "
        f"slice axis {read_props(cache).slice_axis} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def register(subparsers) -> None:
    """Add the data subcommands to the `medtune` parser."""
    p = subparsers.add_parser(
        "phantoms",
        help="write synthetic BraTS-like, KiTS-like or slice-context datasets",
        description="Write synthetic phantoms as an nnU-Net raw dataset.",
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=["brats", "kits", "context"],
        help="BraTS-like 4-channel MRI, KiTS-like CT, or slice-context CT (lesions and vessels "
        "that look alike within a slice)",
    )
    p.add_argument("--cases", required=True, type=int, help="number of cases")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=None,
        help="volume size in voxels (default 64 96 96)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a phantom dataset already in --out (other content is never replaced)",
    )
    p.set_defaults(func=_phantoms)

    p = subparsers.add_parser(
        "convert",
        help="convert BraTS / KiTS / MSD downloads or DICOM series to the nnU-Net raw layout",
        description="Convert a dataset as downloaded into the nnU-Net v2 raw layout (the source "
        "is never modified). dicom: SRC/CASE/ holds one series (or one sub-folder per channel, "
        "named 0000, 0001, ... or by channel name), SRC/labels/CASE.nii.gz its label map on the "
        "series' grid (cases without one go to imagesTs), SRC/dataset.json a template with "
        "channel_names and labels.",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=["brats", "kits", "msd", "dicom"],
        help="source format (the edition is detected)",
    )
    p.add_argument("--src", required=True, help="source folder as downloaded")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument(
        "--link",
        action="store_true",
        help="symlink unchanged image files instead of copying (dicom: images are always written)",
    )
    p.set_defaults(func=_convert)

    p = subparsers.add_parser(
        "check-data",
        help="validate a dataset before training",
        description="Validate a dataset; prints one line per problem and exits 2 when there is any. Writes nothing.",
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="nnU-Net raw or MSD dataset folder")
    p.set_defaults(func=_check_data)

    p = subparsers.add_parser(
        "preprocess",
        help="build the preprocessing cache",
        description="Orient, crop, normalise and store cases as .npy for fast random crops; up-to-date cases are skipped.",
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="nnU-Net raw or MSD dataset folder")
    p.add_argument("--out", required=True, metavar="CACHE_DIR", help="cache folder")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--slice-axis",
        choices=("axial", "coronal", "sagittal", "auto"),
        default="axial",
        help="RAS axis the model's D (the 2D slices) runs along; auto: the axis of the coarsest "
        "median spacing (default axial; training sets it from data.slice_axis)",
    )
    p.set_defaults(func=_preprocess)
