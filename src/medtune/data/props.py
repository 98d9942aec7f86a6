"""`DatasetProps`: the typed dataset facts a model carries from the cache to its adapter folder to
prediction (channels, labels, regions, label conventions, normalisation, target spacing, slice
axis).

    scan (dataset.json)  ->  DatasetInfo.props          (normalisation not yet known)
    preprocess           ->  cache dataset_props.json   (+ per-channel normalisation)
    train                ->  adapter extra["dataset"]   (prediction needs no dataset)
    predict / evaluate   ->  Predictor.props

Serialised as a JSON object with the keys below; the label conventions travel under `"medtune"`,
the name dataset.json uses for them (`source_labels`, `et_label`, `netc_label`, `edition`,
`regions`). Unknown keys of older files are ignored; missing required keys raise naming the file;
files written before the slice axis existed read as axial.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medtune.core.errors import MedtuneInputError
from medtune.data.axes import SLICE_AXES, SliceAxis

Modality = Literal["mri", "ct"]
REQUIRED = ("channel_names", "labels")


@dataclass
class DatasetProps:
    """Dataset-level facts shared by training, the adapter folder and prediction."""

    name: str
    """Dataset name (dataset.json `name`, else the folder name)."""
    channel_names: list[str]
    """Input channels in file order (`_0000`, `_0001`, ...)."""
    labels: dict[str, int]
    """Label name -> value, background (0) included."""
    regions: dict[str, list[int]] = field(default_factory=dict)
    """Evaluated region name -> label values (a union); default one region per label."""
    modality: Modality = "mri"
    """`ct` (one channel named CT: clip + z-score with dataset statistics) or `mri`."""
    file_ending: str = ".nii.gz"
    """Image file ending of the dataset."""
    conventions: dict[str, Any] = field(default_factory=dict)
    """dataset.json's `"medtune"` key: `source_labels`, `et_label`, `netc_label`, `edition`."""
    normalisation: list[dict[str, Any]] = field(default_factory=list)
    """Per-channel normalisation (`zscore_nonzero`, or `ct` with lower/upper/mean/std); empty
    until preprocessing computed it."""
    spacing: tuple[float, float, float] | None = None
    """Target voxel spacing (X, Y, Z) in mm of the cache, None: native."""
    slice_axis: SliceAxis = "axial"
    """The RAS axis the model's D runs along (`medtune.data.axes`), as preprocessing resolved it."""

    def __post_init__(self) -> None:
        self.labels = {str(k): int(v) for k, v in self.labels.items()}
        if not self.regions:
            self.regions = {n: [v] for n, v in self.labels.items() if v != 0}
        self.regions = {str(k): [int(x) for x in v] for k, v in self.regions.items()}
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]

    # --- labels -----------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.labels)

    @property
    def label_values(self) -> np.ndarray:
        """Class index -> label value, `(K,)` int64 (the sorted label values)."""
        return np.array(sorted(self.labels.values()), dtype=np.int64)

    @property
    def source_labels(self) -> dict[int, int]:
        """Label value -> value in the source dataset's convention (identity when not converted,
        e.g. BraTS 2019 ET 3 -> 4)."""
        src = self.conventions.get("source_labels") or {}
        out = {v: v for v in self.labels.values()}
        out.update({int(k): int(v) for k, v in src.items()})
        return out

    def source_lut(self) -> np.ndarray:
        """Class index -> label value in the source convention, `(K,)` int64."""
        src = self.source_labels
        return np.array([src[int(v)] for v in self.label_values], dtype=np.int64)

    @property
    def et_label(self) -> int | None:
        """Enhancing-tumour label (brain tumour datasets), else None."""
        v = self.conventions.get("et_label")
        return None if v is None else int(v)

    @property
    def netc_label(self) -> int | None:
        """Necrotic / non-enhancing core label that small ET predictions are relabelled to."""
        v = self.conventions.get("netc_label")
        return None if v is None else int(v)

    def check_compatible(self, other: DatasetProps, where: str) -> None:
        """Raise when `other` (e.g. a dataset to evaluate on) has other channels or labels."""
        if other.num_channels != self.num_channels:
            raise MedtuneInputError(
                f"{where}: the model expects {self.num_channels} channel(s) "
                f"({', '.join(self.channel_names)}), the dataset has {other.num_channels} "
                f"({', '.join(other.channel_names)})"
            )
        if sorted(other.labels.values()) != sorted(self.labels.values()):
            raise MedtuneInputError(
                f"{where}: expected the labels the model was trained on {self.labels}, "
                f"found {other.labels}"
            )

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON form (conventions under `"medtune"`, as dataset.json names them)."""
        out = dataclasses.asdict(self)
        out["medtune"] = out.pop("conventions")
        out["spacing"] = list(self.spacing) if self.spacing is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> DatasetProps:
        """Read the JSON form (also the untyped dicts of earlier adapter folders)."""
        if not isinstance(data, dict):
            raise MedtuneInputError(
                f"{where}: expected dataset properties as a mapping, found {type(data).__name__}"
            )
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise MedtuneInputError(
                f"{where}: expected {', '.join(REQUIRED)} in the dataset properties, "
                f"found keys {sorted(data)}"
            )
        conventions = dict(data.get("medtune") or {})
        regions = data.get("regions") or conventions.get("regions") or {}
        modality = data.get("modality") or "mri"
        if modality not in ("mri", "ct"):
            raise MedtuneInputError(
                f"{where}: dataset modality: expected mri or ct, found {modality!r}"
            )
        slice_axis = data.get("slice_axis") or "axial"
        if slice_axis not in SLICE_AXES:
            raise MedtuneInputError(
                f"{where}: slice_axis: expected one of {', '.join(SLICE_AXES)}, "
                f"found {slice_axis!r}"
            )
        return cls(
            name=str(data.get("name") or ""),
            channel_names=[str(c) for c in data["channel_names"]],
            labels=dict(data["labels"]),
            regions=dict(regions),
            modality=modality,
            file_ending=str(data.get("file_ending") or ".nii.gz"),
            conventions=conventions,
            normalisation=list(data.get("normalisation") or []),
            spacing=data.get("spacing"),
            slice_axis=slice_axis,
        )
