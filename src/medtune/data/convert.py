"""Convert BraTS, KiTS and MSD downloads, or DICOM series with NIfTI labels, into the nnU-Net v2
raw layout (source never modified).

Labels are mapped to consecutive values by the detected edition, never by a label value alone;
dataset.json records the mapping under the "medtune" key (see `medtune.data.dataset`).

| edition | source labels | medtune labels | regions |
|---|---|---|---|
| BraTS 2019/2020/2021 | 1 NCR/NET, 2 ED, 4 ET | 1, 2, 3 | WT {1,2,3}, TC {1,3}, ET {3} |
| BraTS 2023 (GLI, MEN, MET, PED, SSA) | 1 NETC, 2 SNFH, 3 ET | same | WT {1,2,3}, TC {1,3}, ET {3} |
| BraTS 2024 GLI post-treatment | as 2023, 4 RC | same | as 2023, RC {4} |
| MSD Task01_BrainTumour | 1 edema, 2 non-enhancing, 3 enhancing | same | WT {1,2,3}, TC {2,3}, ET {3} |
| KiTS19 | 1 kidney, 2 tumour | same | kidney {1,2}, tumour {2} |
| KiTS21 / KiTS23 | 1 kidney, 2 tumour, 3 cyst | same | kidney {1,2,3}, masses {2,3}, tumour {2} |
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medtune.core.errors import MedtuneInputError
from medtune.core.registry import Registry
from medtune.data.dataset import scan_dataset
from medtune.data.io import (
    copy_or_link,
    is_hidden,
    nifti_ending,
    save_json,
    save_nifti,
    strip_nifti,
)

CONVERTERS: Registry = Registry("dataset format")

BRATS_CHANNELS = ["FLAIR", "T1", "T1ce", "T2"]
_BRATS_OLD = re.compile(r"^(?P<case>.+)_(?P<kind>flair|t1ce|t1|t2|seg)$", re.IGNORECASE)
_BRATS_NEW = re.compile(r"^(?P<case>.+)-(?P<kind>t2f|t1n|t1c|t2w|seg)$", re.IGNORECASE)
_CHANNEL_OF = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3, "t2f": 0, "t1n": 1, "t1c": 2, "t2w": 3}


def _note(msg: str) -> None:
    print(msg, file=sys.stderr)


def _check_paths(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise MedtuneInputError(
            f"--src {src}: expected a folder, found {'a file' if src.exists() else 'nothing'}"
        )
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise MedtuneInputError(
            f"--out {out}: expected a folder outside --src {src}, found an overlapping path"
        )
    if out.exists() and any(out.iterdir()):
        raise MedtuneInputError(
            f"--out {out}: expected a new or empty folder, found existing files"
        )


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not is_hidden(p) and nifti_ending(p)
    )


def _place(src: Path, dst_noext: Path, ending: str, link: bool) -> Path:
    """Copy / link `src` to `dst_noext + ending`, re-encoding when its ending differs."""
    dst = dst_noext.with_name(dst_noext.name + ending)
    if nifti_ending(src) == ending:
        return copy_or_link(src, dst, link)
    img = nib.load(str(src))
    return save_nifti(np.asanyarray(img.dataobj), img.affine, dst, dtype=img.get_data_dtype())


def _write_label(src: Path, dst: Path, lut: dict[int, int], edition: str) -> set[int]:
    """Map label values of `src` with `lut` (source -> medtune) into `dst`; returns the values."""
    img = nib.load(str(src))
    arr = np.asanyarray(img.dataobj)
    vals = np.unique(arr)
    if not np.all(np.mod(vals, 1) == 0) or set(vals.astype(int).tolist()) - set(lut):
        raise MedtuneInputError(
            f"{src}: expected {edition} label values {sorted(lut)}, found {vals.tolist()}"
        )
    table = np.zeros(int(max(lut)) + 1, np.uint8)
    for k, v in lut.items():
        table[k] = v
    save_nifti(table[arr.astype(np.int64)], img.affine, dst, dtype=np.uint8)
    return set(vals.astype(int).tolist())


def _dataset_json(
    out: Path,
    name: str,
    channels: list[str],
    labels: dict,
    n_train: int,
    ending: str,
    medtune: dict,
) -> None:
    save_json(
        {
            "name": name,
            "channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": labels,
            "numTraining": n_train,
            "file_ending": ending,
            "medtune": medtune,
        },
        out / "dataset.json",
    )


def _dominant_ending(files: list[Path]) -> str:
    endings = [nifti_ending(f) for f in files]
    return ".nii" if endings and all(e == ".nii" for e in endings) else ".nii.gz"


# ----------------------------------------------------------------------------------- BraTS


def _brats_cases(src: Path):
    """{case_id: {"dir", "style", channel index -> Path, "seg" -> Path}} over all sub-folders."""
    cases: dict[str, dict] = {}
    for dirpath, dirnames, _ in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        found: dict[str, dict] = defaultdict(dict)
        leftovers = []
        for f in _nifti_files(folder):
            stem = strip_nifti(f)
            m = _BRATS_OLD.match(stem) or _BRATS_NEW.match(stem)
            if not m:
                leftovers.append(f)
                continue
            entry = found[m["case"]]
            entry["style"] = "old" if m.re is _BRATS_OLD else "new"
            entry["seg" if m["kind"].lower() == "seg" else _CHANNEL_OF[m["kind"].lower()]] = f
        for case_id, entry in found.items():
            if "seg" not in entry and len(found) == 1 and all(c in entry for c in range(4)):
                segm = [f for f in leftovers if "seg" in f.name.lower()]
                if len(segm) == 1:  # BraTS 2020 case 355: W39_1998.09.19_Segm.nii
                    entry["seg"] = segm[0]
                    _note(
                        f"{case_id}: using {segm[0].name} as the label file (known misnamed file)"
                    )
            if case_id in cases:
                raise MedtuneInputError(
                    f"{folder}: expected unique BraTS case ids, found {case_id} also in {cases[case_id]['dir']}"
                )
            entry["dir"] = folder
            cases[case_id] = entry
    return cases


def _brats_edition(cases: dict, src: Path) -> str:
    styles = {e["style"] for e in cases.values()}
    if len(styles) > 1:
        raise MedtuneInputError(
            f"--src {src}: expected one BraTS naming scheme, found both _flair/_t1ce (2019-2021) and -t2f/-t1c (2023+) files"
        )
    if styles == {"new"}:
        return "2024" if "2024" in str(src.resolve()) else "2023"
    ids = list(cases)
    for prefix, ed in (
        ("brats2021", "2021"),
        ("brats20_", "2020"),
        ("brats19", "2019"),
        ("brats18", "2018"),
    ):
        if all(i.lower().startswith(prefix) for i in ids):
            return ed
    return "2019-2021"


@CONVERTERS.register("brats")
def convert_brats(src: Path, out: Path, link: bool = False) -> Path:
    """BraTS 2019/2020/2021 (`_flair, _t1, _t1ce, _t2, _seg`) or 2023/2024 (`-t2f, -t1n, -t1c, -t2w, -seg`)."""
    cases = _brats_cases(src)
    if not cases:
        raise MedtuneInputError(
            f"--src {src}: expected BraTS case folders with *_flair/_t1/_t1ce/_t2 or *-t2f/-t1n/-t1c/-t2w files, found none"
        )
    for cid, e in cases.items():
        missing = [BRATS_CHANNELS[c] for c in range(4) if c not in e]
        if missing:
            raise MedtuneInputError(
                f"{e['dir']}: expected all 4 modalities for {cid}, found none for {', '.join(missing)}"
            )
    edition = _brats_edition(cases, src)
    ending = _dominant_ending([e[c] for e in cases.values() for c in range(4)])
    if edition in ("2023", "2024"):
        lut = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4} if edition == "2024" else {0: 0, 1: 1, 2: 2, 3: 3}
        labels = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
        source = {"1": 1, "2": 2, "3": 3}
    else:
        lut = {0: 0, 1: 1, 2: 2, 4: 3}
        labels = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
        source = {"1": 1, "2": 2, "3": 4}
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    n_train = 0
    for cid, e in tqdm(sorted(cases.items()), desc="convert brats", unit="case", file=sys.stderr):
        split = "Tr" if "seg" in e else "Ts"
        for c in range(4):
            _place(e[c], out / f"images{split}" / f"{cid}_{c:04d}", ending, link)
        if "seg" in e:
            try:
                _write_label(e["seg"], out / "labelsTr" / f"{cid}{ending}", lut, f"BraTS {edition}")
            except MedtuneInputError as exc:
                hint = " (BraTS 2024 post-treatment data with resection cavity 4? put '2024' in the --src folder name)"
                raise MedtuneInputError(f"{exc}{hint if edition == '2023' else ''}") from None
            n_train += 1
    if edition == "2024":
        labels["RC"] = 4
        source["4"] = 4
        regions["RC"] = [4]
    meta = {
        "regions": regions,
        "source_labels": source,
        "et_label": 3,
        "netc_label": 1,
        "edition": f"BraTS {edition}",
        "source_format": "brats",
    }
    _dataset_json(out, f"BraTS{edition}", BRATS_CHANNELS, labels, n_train, ending, meta)
    return out


# ------------------------------------------------------------------------------------ KiTS


def _kits_edition(src: Path, case_dirs: list[Path]) -> str:
    for token in ("kits19", "kits21", "kits23"):
        if token in str(src.resolve()).lower():
            return "20" + token[-2:]
    if any(any(d.glob("aggregated_MAJ_seg.nii*")) for d in case_dirs):
        return "2021"
    nums = [int(m.group(1)) for d in case_dirs if (m := re.search(r"(\d+)$", d.name))]
    if any((d / "instances").is_dir() for d in case_dirs) or any(n >= 300 for n in nums):
        return "2023"
    return "2019"


@CONVERTERS.register("kits")
def convert_kits(src: Path, out: Path, link: bool = False) -> Path:
    """KiTS19 / KiTS23 (`imaging`, `segmentation`) or KiTS21 (`imaging`, `aggregated_MAJ_seg`)."""
    case_dirs = sorted({p.parent for p in src.rglob("imaging.nii*") if not is_hidden(p)})
    if not case_dirs:
        raise MedtuneInputError(
            f"--src {src}: expected KiTS case folders with imaging.nii.gz, found none"
        )
    ids = [d.name for d in case_dirs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise MedtuneInputError(
            f"--src {src}: expected unique KiTS case folders, found {dup[0]} twice"
        )
    edition = _kits_edition(src, case_dirs)
    seg_name = "aggregated_MAJ_seg" if edition == "2021" else "segmentation"
    images = {d.name: _nifti_files_named(d, "imaging") for d in case_dirs}
    ending = _dominant_ending(list(images.values()))
    n_train = 0
    for d in tqdm(case_dirs, desc="convert kits", unit="case", file=sys.stderr):
        seg = _nifti_files_named(d, seg_name, required=False)
        split = "Tr" if seg else "Ts"
        _place(images[d.name], out / f"images{split}" / f"{d.name}_0000", ending, link)
        if seg:
            _place(seg, out / "labelsTr" / d.name, ending, link)
            n_train += 1
    if edition == "2019":
        labels = {"background": 0, "kidney": 1, "tumour": 2}
        regions = {"kidney": [1, 2], "tumour": [2]}
    else:
        labels = {"background": 0, "kidney": 1, "tumour": 2, "cyst": 3}
        regions = {"kidney": [1, 2, 3], "masses": [2, 3], "tumour": [2]}
    source = {str(v): v for v in labels.values() if v}
    meta = {
        "regions": regions,
        "source_labels": source,
        "edition": f"KiTS{edition[2:]}",
        "source_format": "kits",
    }
    _dataset_json(out, f"KiTS{edition[2:]}", ["CT"], labels, n_train, ending, meta)
    return out


def _nifti_files_named(folder: Path, stem: str, required: bool = True) -> Path | None:
    hits = [p for p in _nifti_files(folder) if strip_nifti(p) == stem]
    if not hits and required:
        raise MedtuneInputError(f"{folder}: expected {stem}.nii.gz, found none")
    return hits[0] if hits else None


# ------------------------------------------------------------------------------------- MSD


def _is_msd_brain(name: str, src: Path) -> bool:
    return "brats" in name.lower() or "braintumour" in src.resolve().name.lower()


@CONVERTERS.register("msd")
def convert_msd(src: Path, out: Path, link: bool = False) -> Path:
    """A Medical Segmentation Decathlon task (4D images are split into one file per channel)."""
    info, problems = scan_dataset(src)
    if info is None or problems:
        p = problems[0] if problems else None
        raise MedtuneInputError(
            f"--src {src}: {p}" if p else f"--src {src}: expected an MSD task folder"
        )
    if info.layout != "msd":
        raise MedtuneInputError(
            f"--src {src}: expected an MSD dataset.json with 'training' and 'modality', found an nnU-Net raw dataset (use it in place)"
        )
    n = info.props.num_channels
    for split, cases in (("Tr", info.cases), ("Ts", info.test_cases)):
        for case in tqdm(cases, desc=f"convert msd images{split}", unit="case", file=sys.stderr):
            img_path = case.images[0]
            if n == 1:
                _place(img_path, out / f"images{split}" / f"{case.case_id}_0000", ".nii.gz", link)
            else:
                img = nib.load(str(img_path))
                if len(img.shape) != 4 or img.shape[3] != n:
                    raise MedtuneInputError(
                        f"{img_path}: expected a 4D image with {n} channels, found shape {img.shape}"
                    )
                data = np.asanyarray(img.dataobj)
                for c in range(n):
                    save_nifti(
                        data[..., c],
                        img.affine,
                        out / f"images{split}" / f"{case.case_id}_{c:04d}.nii.gz",
                        dtype=img.get_data_dtype(),
                    )
            if case.label is not None:
                _place(case.label, out / "labelsTr" / case.case_id, ".nii.gz", link)
    meta = {
        "source_format": "msd",
        "edition": f"MSD {info.props.name}",
        "source_labels": {str(v): v for v in info.props.labels.values() if v},
    }
    if _is_msd_brain(info.props.name, src):
        meta.update(regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}, et_label=3, netc_label=2)
    else:
        meta["regions"] = info.props.regions
    _dataset_json(
        out,
        info.props.name,
        info.props.channel_names,
        info.props.labels,
        len(info.cases),
        ".nii.gz",
        meta,
    )
    return out


# ----------------------------------------------------------------------------------- DICOM

DICOM_LABELS_DIR = "labels"
"""Sub-folder of a DICOM source holding the NIfTI label maps `CASE.nii.gz`."""


def _dicom_template(src: Path):
    """The dataset properties of `SRC/dataset.json` (channel_names and labels required)."""
    import json

    from medtune.data.dataset import parse_dataset_json

    path = src / "dataset.json"
    if not path.is_file():
        raise MedtuneInputError(
            f"{path}: expected a dataset.json template with channel_names and labels (e.g. "
            '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}), found none'
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedtuneInputError(f"{path}: expected valid JSON, found {exc}") from None
    if not isinstance(data, dict):
        raise MedtuneInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    filled = {"numTraining": 0, "file_ending": ".nii.gz", **data}
    return parse_dataset_json(filled, str(path), src.resolve().name), data


def _dicom_labels(src: Path, case_ids: set[str]) -> dict[str, Path]:
    folder = src / DICOM_LABELS_DIR
    if not folder.is_dir():
        return {}
    labels = {strip_nifti(p): p for p in _nifti_files(folder)}
    unknown = sorted(set(labels) - case_ids)
    if unknown:
        raise MedtuneInputError(
            f"{labels[unknown[0]]}: expected a label of a case folder of --src ({len(case_ids)} "
            f"found), found none named {unknown[0]}"
        )
    return labels


def _image_dtype(arr: np.ndarray):
    """int16 when the (rescaled) intensities are whole numbers that fit, else float32."""
    finite = np.isfinite(arr).all()
    if finite and np.all(arr == np.rint(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        return np.int16
    return np.float32


def _check_label_grid(path: Path, geom) -> None:
    """Refuse a label file (from its header) unless it lies on the series' grid."""
    from medtune.data.dicom import AFFINE_TOL
    from medtune.data.io import nifti_geometry

    shape, affine, _ = nifti_geometry(path)
    diff = float(np.abs(affine - geom.affine).max())
    if tuple(shape) != tuple(geom.shape) or diff > AFFINE_TOL:
        raise MedtuneInputError(
            f"{path}: expected the grid of the series {geom.folder} (shape {geom.shape}, affine "
            f"within {AFFINE_TOL}), found shape {tuple(shape)} and an affine differing by "
            f"{diff:.4g}; write the label on the series' grid"
        )


@CONVERTERS.register("dicom")
def convert_dicom(src: Path, out: Path, link: bool = False) -> Path:
    """DICOM series + NIfTI labels: `SRC/CASE/` (one series, or one sub-folder per channel:
    `0000`, ... or the channel's name), `SRC/labels/CASE.nii.gz`, `SRC/dataset.json` template."""
    from medtune.data.dicom import case_series, check_same_grid, load_series, series_geometry
    from medtune.data.io import describe_folder, read_label_map

    props, template = _dicom_template(src)
    names = props.channel_names
    folders = [
        d
        for d in sorted(src.iterdir())
        if d.is_dir() and not is_hidden(d) and d.name != DICOM_LABELS_DIR
    ]
    cases: dict[str, list[Path]] = {}
    for d in folders:
        series = case_series(d, names)
        if series is None:
            raise MedtuneInputError(
                f"{d}: expected a DICOM case folder (a series, or one sub-folder per channel "
                f"{', '.join(names)}), found {describe_folder(d, 'convert')}"
            )
        cases[d.name] = series
    if not cases:
        raise MedtuneInputError(
            f"--src {src}: expected one folder per case holding DICOM series, found none"
        )
    labels = _dicom_labels(src, set(cases))
    grids = {}
    for cid, series in cases.items():  # headers only, before anything is written
        grids[cid] = [series_geometry(d) for d in series]
        check_same_grid(grids[cid], "channel")
        if cid in labels:
            _check_label_grid(labels[cid], grids[cid][0])
    declared = props.labels.values()
    for cid, series in tqdm(
        sorted(cases.items()), desc="convert dicom", unit="case", file=sys.stderr
    ):
        geoms = grids[cid]
        split = "Tr" if cid in labels else "Ts"
        if cid in labels:  # written on the series' affine (equal within AFFINE_TOL)
            lab, _ = read_label_map(labels[cid], declared)
            save_nifti(lab, geoms[0].affine, out / "labelsTr" / f"{cid}.nii.gz")
        for c, d in enumerate(series):
            arr = load_series(d)[0].numpy()
            dst = out / f"images{split}" / f"{cid}_{c:04d}.nii.gz"
            save_nifti(arr, geoms[c].affine, dst, dtype=_image_dtype(arr))
    meta = dict(template.get("medtune") or {})
    meta.update(regions=props.regions, source_format="dicom")
    meta.setdefault("source_labels", {str(v): v for v in props.labels.values() if v})
    _dataset_json(out, props.name, names, props.labels, len(labels), ".nii.gz", meta)
    return out


def convert(fmt: str, src: str | Path, out: str | Path, link: bool = False) -> Path:
    """Convert `src` (as downloaded) of format 'brats' | 'kits' | 'msd' | 'dicom' into nnU-Net
    raw `out`."""
    src, out = Path(src), Path(out)
    fn = CONVERTERS.get(fmt)
    _check_paths(src, out)
    out.mkdir(parents=True, exist_ok=True)
    return fn(src, out, link=link)
