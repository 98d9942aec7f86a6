"""Read a dataset in place: nnU-Net v2 raw layout or the Medical Segmentation Decathlon layout.

nnU-Net v2 raw: `imagesTr/CASE_0000.nii.gz` (one file per channel), `labelsTr/CASE.nii.gz`,
`imagesTs/` (with `labelsTs/CASE.nii.gz` when the test cases are labelled), and `dataset.json` with `channel_names`, `labels` (name -> value), `numTraining`,
`file_ending`. MSD: `dataset.json` with `modality`, `labels` (value -> name) and a `training`
list of `{"image": 4D file, "label": file}`.

medtune reads an optional `"medtune"` key of dataset.json (nnU-Net ignores it): `regions`
(name -> list of label values, evaluated as a union), `source_labels` (label -> value in the
source's convention), `et_label` and `netc_label` (brain tumour post-processing), `edition`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.core.errors import MedtuneInputError
from medtune.data.io import (
    CHANNEL_RE,
    NIFTI_ENDINGS,
    describe_folder,
    is_hidden,
    nifti_ending,
    strip_nifti,
)
from medtune.data.props import DatasetProps

NNUNET_REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass
class Problem:
    """One thing wrong with a dataset, printed as `CASE FILE: expected ..., found ...`."""

    case: str
    file: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.case} {self.file}: expected {self.expected}, found {self.found}"


@dataclass
class CaseFiles:
    """Files of one case: one image per channel, or one 4D image (MSD) with `is_4d`."""

    case_id: str
    images: list[Path]
    label: Path | None = None
    is_4d: bool = False


@dataclass
class DatasetInfo:
    """A dataset read from its folder in place: its properties and its case files."""

    root: Path
    layout: str
    """`nnunet` (nnU-Net v2 raw) or `msd` (Medical Segmentation Decathlon)."""
    props: DatasetProps
    """Channels, labels, regions, label conventions (normalisation is added by preprocessing)."""
    cases: list[CaseFiles] = field(default_factory=list)
    test_cases: list[CaseFiles] = field(default_factory=list)

    def case(self, case_id: str, test: bool = False) -> CaseFiles:
        """The training case `case_id` (with `test`: the test case, `imagesTs` / `labelsTs`)."""
        for c in self.test_cases if test else self.cases:
            if c.case_id == case_id:
                return c
        kind = "test" if test else "training"
        raise MedtuneInputError(f"{self.root}: expected a {kind} case '{case_id}', found none")


def modality_from_channels(channel_names: list[str]) -> str:
    """'ct' when the single channel is named CT (any case), else 'mri'."""
    if len(channel_names) == 1 and channel_names[0].strip().lower() == "ct":
        return "ct"
    return "mri"


def default_regions(labels: dict[str, int]) -> dict[str, list[int]]:
    """One region per foreground label."""
    return {name: [v] for name, v in labels.items() if v != 0}


def read_dataset_json(root: Path, problems: list[Problem]) -> dict | None:
    path = root / "dataset.json"
    if not path.is_file():
        problems.append(Problem("(dataset)", "dataset.json", "a dataset.json file", "none"))
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(Problem("(dataset)", "dataset.json", "valid JSON", f"{exc}"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem("(dataset)", "dataset.json", "a JSON object", type(data).__name__))
        return None
    return data


def _parse_labels(raw: Any, msd: bool, problems: list[Problem]):
    """labels name->value and the regions implied by region-based (list-valued) entries."""
    labels: dict[str, int] = {}
    regions: dict[str, list[int]] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append(
            Problem("(dataset)", "dataset.json", "'labels' as a non-empty mapping", repr(raw))
        )
        return labels, regions
    try:
        if msd:  # MSD: value -> name
            labels = {str(name): int(v) for v, name in raw.items()}
        else:
            for name, v in raw.items():
                if isinstance(v, list | tuple):  # nnU-Net region-based labels
                    regions[str(name)] = sorted(int(x) for x in v)
                else:
                    labels[str(name)] = int(v)
                    if int(v) != 0:
                        regions[str(name)] = [int(v)]
    except (TypeError, ValueError):
        problems.append(Problem("(dataset)", "dataset.json", "integer label values", repr(raw)))
        return {}, {}
    if regions and any(isinstance(v, list | tuple) for v in raw.values()):
        known = set(labels.values())
        for vals in regions.values():
            for v in vals:
                if v not in known:
                    labels[f"label_{v}"] = v
                    known.add(v)
    else:
        regions = {}
    if 0 not in labels.values():
        labels = {"background": 0, **labels}
    return labels, regions


def _channel_names(data: dict, key: str, problems: list[Problem]) -> list[str]:
    raw = data.get(key)
    if not isinstance(raw, dict) or not raw:
        problems.append(
            Problem("(dataset)", "dataset.json", f"'{key}' as a non-empty mapping", repr(raw))
        )
        return []
    try:
        items = sorted(((int(k), str(v)) for k, v in raw.items()))
    except ValueError:
        problems.append(
            Problem("(dataset)", "dataset.json", f"'{key}' keys 0, 1, ...", repr(list(raw)))
        )
        return []
    if [k for k, _ in items] != list(range(len(items))):
        problems.append(
            Problem(
                "(dataset)", "dataset.json", f"'{key}' keys 0..{len(items) - 1}", repr(list(raw))
            )
        )
    return [v for _, v in items]


def _files_by_id(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if not is_hidden(p) and nifti_ending(p):
                out[strip_nifti(p)].append(p)
    return out


class _NnunetScan:
    """Training and test cases of an nnU-Net raw folder; layout problems go to `problems`."""

    def __init__(self, root: Path, n_ch: int, ending: str, problems: list[Problem]):
        self.root, self.n_ch, self.ending, self.problems = root, n_ch, ending, problems

    def images(self, folder: Path, kind: str) -> dict[str, dict[int, Path]]:
        """`{case_id: {channel: path}}` of an images folder (the dataset's file ending first)."""
        out: dict[str, dict[int, Path]] = defaultdict(dict)
        for stem, paths in _files_by_id(folder).items():
            if len(paths) > 1:
                self.problems.append(
                    Problem(
                        stem.rsplit("_", 1)[0],
                        f"{folder.name}/{stem}.*",
                        "one file per channel (duplicate case id)",
                        ", ".join(p.name for p in paths),
                    )
                )
            m = CHANNEL_RE.match(stem)
            if not m:
                want = "a name CASE_XXXX" + self.ending + f" in {kind}"
                self.problems.append(
                    Problem(stem, f"{folder.name}/{paths[0].name}", want, paths[0].name)
                )
                continue
            preferred = [p for p in paths if nifti_ending(p) == self.ending] or paths
            out[m["case"]][int(m["ch"])] = preferred[0]
        return out

    def channel_paths(self, case_id: str, chans: dict[int, Path], folder: str) -> list[Path]:
        """The case's `n_ch` image paths (the expected path where one is missing)."""
        paths = []
        for ch in range(self.n_ch):
            want = f"{folder}/{case_id}_{ch:04d}{self.ending}"
            p = chans.get(ch)
            if p is None:
                found = "no images at all" if not chans else "none"
                self.problems.append(Problem(case_id, want, f"a file for channel {ch}", found))
            paths.append(p if p is not None else self.root / want)
        for ch in sorted(chans):
            if ch >= self.n_ch:
                expected = f"channels 0000..{self.n_ch - 1:04d} (dataset.json lists {self.n_ch})"
                self.problems.append(
                    Problem(case_id, f"{folder}/{chans[ch].name}", expected, f"channel {ch:04d}")
                )
        for p in chans.values():
            if nifti_ending(p) != self.ending:
                self.problems.append(
                    Problem(
                        case_id, f"{folder}/{p.name}", f"file_ending {self.ending}", nifti_ending(p)
                    )
                )
        return paths

    def label_path(
        self, case_id: str, found: list[Path] | None, folder: str, required: bool
    ) -> Path | None:
        """The case's label file among `found` (None when there is none)."""
        if not found:
            if required:
                want = f"{folder}/{case_id}{self.ending}"
                self.problems.append(Problem(case_id, want, "a label file", "none"))
            return None
        label = found[0]
        if len(found) > 1:
            self.problems.append(
                Problem(
                    case_id,
                    f"{folder}/{case_id}.*",
                    "one label file (duplicate case id)",
                    ", ".join(p.name for p in found),
                )
            )
        elif nifti_ending(label) != self.ending:
            self.problems.append(
                Problem(
                    case_id,
                    f"{folder}/{label.name}",
                    f"file_ending {self.ending}",
                    nifti_ending(label),
                )
            )
        return label

    def cases(self, folder: str, label_folder: str, labels_required: bool) -> list[CaseFiles]:
        """Every case of `folder` (imagesTr / imagesTs) with its label from `label_folder`."""
        img = self.images(self.root / folder, folder)
        label_dir = self.root / label_folder
        labels = _files_by_id(label_dir) if labels_required or label_dir.is_dir() else None
        cases = []
        for case_id in sorted(set(img) | set(labels or {})):
            paths = self.channel_paths(case_id, img.get(case_id, {}), folder)
            label = None
            if labels is not None:
                label = self.label_path(case_id, labels.get(case_id), label_folder, labels_required)
            cases.append(CaseFiles(case_id, paths, label))
        return cases


def _scan_nnunet(root: Path, data: dict, n_ch: int, ending: str, problems: list[Problem]):
    """Training and test cases of an nnU-Net raw folder, reporting layout problems."""
    scan = _NnunetScan(root, n_ch, ending, problems)
    tr = scan.cases("imagesTr", "labelsTr", labels_required=True)
    ts = scan.cases("imagesTs", "labelsTs", labels_required=False)
    num = data.get("numTraining")
    if isinstance(num, int) and tr and num != len(tr):
        problems.append(
            Problem(
                "(dataset)",
                "dataset.json",
                f"numTraining equal to the {len(tr)} training cases found",
                str(num),
            )
        )
    return tr, ts


def _scan_msd(root: Path, data: dict, n_ch: int, problems: list[Problem]):
    def resolve(p: str) -> Path:
        return Path(os.path.normpath(root / p)) if not Path(p).is_absolute() else Path(p)

    tr, seen = [], set()
    entries = data.get("training")
    if not isinstance(entries, list):
        problems.append(
            Problem("(dataset)", "dataset.json", "'training' as a list", repr(entries)[:60])
        )
        entries = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            problems.append(
                Problem(
                    "(dataset)",
                    "dataset.json",
                    f"training[{i}] with 'image' and 'label'",
                    repr(e)[:60],
                )
            )
            continue
        img, lab = resolve(e["image"]), resolve(e["label"])
        case_id = strip_nifti(img)
        if case_id in seen:
            problems.append(
                Problem(
                    case_id, str(e["image"]), "unique case ids", "a duplicate entry in 'training'"
                )
            )
            continue
        seen.add(case_id)
        for p, what in ((img, "image"), (lab, "label")):
            if not p.exists():
                problems.append(
                    Problem(
                        case_id, str(e[what]), f"the {what} file listed in dataset.json", "none"
                    )
                )
        tr.append(CaseFiles(case_id, [img], lab, is_4d=n_ch > 1))
    ts = []
    for p in data.get("test", []) or []:
        path = resolve(p if isinstance(p, str) else p.get("image", ""))
        ts.append(CaseFiles(strip_nifti(path), [path], None, is_4d=n_ch > 1))
    return tr, ts


def _props_from_json(
    data: dict, default_name: str, problems: list[Problem]
) -> tuple[DatasetProps | None, bool]:
    """(properties or None, whether the layout is MSD) of a parsed dataset.json."""
    msd = (
        isinstance(data.get("training"), list)
        and "modality" in data
        and "channel_names" not in data
    )
    if msd:
        channels = _channel_names(data, "modality", problems)
        ending = ".nii.gz"
    else:
        missing = [k for k in NNUNET_REQUIRED if k not in data]
        for k in missing:
            problems.append(Problem("(dataset)", "dataset.json", f"required field '{k}'", "none"))
        if "channel_names" in missing or "labels" in missing:
            return None, msd
        channels = _channel_names(data, "channel_names", problems)
        ending = data.get("file_ending", ".nii.gz")
        if ending not in NIFTI_ENDINGS:
            problems.append(
                Problem(
                    "(dataset)", "dataset.json", "file_ending '.nii.gz' or '.nii'", repr(ending)
                )
            )
            ending = ".nii.gz"
    labels, label_regions = _parse_labels(data.get("labels"), msd, problems)
    if not channels or not labels:
        return None, msd
    extra = data.get("medtune") or {}
    if not isinstance(extra, dict):
        problems.append(
            Problem("(dataset)", "dataset.json", "'medtune' as a mapping", repr(extra)[:60])
        )
        extra = {}
    regions = {str(k): [int(x) for x in v] for k, v in (extra.get("regions") or {}).items()}
    regions = regions or label_regions or default_regions(labels)
    known = set(labels.values())
    for name, vals in regions.items():
        bad = [v for v in vals if v not in known]
        if bad:
            problems.append(
                Problem(
                    "(dataset)",
                    "dataset.json",
                    f"region '{name}' made of declared labels {sorted(known)}",
                    f"{bad}",
                )
            )
    props = DatasetProps(
        name=str(data.get("name") or default_name),
        channel_names=channels,
        labels=labels,
        regions=regions,
        modality=modality_from_channels(channels),
        file_ending=ending,
        conventions=dict(extra, regions=regions),
    )
    return props, msd


def scan_dataset(root: str | Path) -> tuple[DatasetInfo | None, list[Problem]]:
    """Read a dataset folder without opening images; returns (info or None, layout problems)."""
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        found = "a file" if root.exists() else "no such folder"
        return None, [Problem("(dataset)", str(root), "a dataset folder", found)]
    data = read_dataset_json(root, problems)
    if data is None:
        return None, problems
    props, msd = _props_from_json(data, root.name, problems)
    if props is None:
        return None, problems
    if msd:
        tr, ts = _scan_msd(root, data, props.num_channels, problems)
    else:
        tr, ts = _scan_nnunet(root, data, props.num_channels, props.file_ending, problems)
    if not tr:
        found = "none" if msd else describe_folder(root / "imagesTr", "check-data/preprocess")
        problems.append(
            Problem(
                "(dataset)",
                "imagesTr/" if not msd else "dataset.json",
                "at least one training case",
                found,
            )
        )
    info = DatasetInfo(
        root=root, layout="msd" if msd else "nnunet", props=props, cases=tr, test_cases=ts
    )
    return info, problems


def parse_dataset_json(data: dict, where: str, default_name: str) -> DatasetProps:
    """Channels, labels, regions and file ending of a parsed dataset.json, as `scan_dataset`
    reads them; the first problem raises MedtuneInputError naming `where`."""
    problems: list[Problem] = []
    props, _ = _props_from_json(data, default_name, problems)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MedtuneInputError(
            f"{where}: expected {problems[0].expected}, found {problems[0].found}{more}"
        )
    assert props is not None  # every failed parse records a problem
    return props


def read_dataset_props(path: str | Path) -> DatasetProps:
    """Channels, labels, regions and file ending of one dataset.json file (no image folders
    needed), parsed as `scan_dataset` parses a dataset's; a problem raises MedtuneInputError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneInputError(f"{path}: expected a dataset.json file, found none")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedtuneInputError(f"{path}: expected valid JSON, found {exc}") from None
    if not isinstance(data, dict):
        raise MedtuneInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return parse_dataset_json(data, str(path), path.parent.name)


def load_dataset(root: str | Path) -> DatasetInfo:
    """Read an nnU-Net v2 raw or MSD dataset in place; layout problems raise MedtuneInputError."""
    info, problems = scan_dataset(root)
    if problems:
        more = (
            f" (+{len(problems) - 1} more; run `medtune check-data {root}`)"
            if len(problems) > 1
            else ""
        )
        raise MedtuneInputError(f"{root}: {problems[0]}{more}")
    assert info is not None
    return info
