"""Fold ensembles: several runs of one dataset (e.g. its 5 folds), their softmax averaged.

What must match between the runs (their `DatasetProps`, read from the adapter folders before
any model is built): the dataset (`name`), the channels in order, the labels (name -> value),
the label conventions of the `"medtune"` key (`source_labels`, `et_label`, ...: the outputs are
written in them) and the preprocessing that defines the grid the probabilities are averaged in,
target `spacing` and per-channel `normalisation`; any other dataset property added later is
compared too. What may differ: the model (backbone, method, decoder), the sliding window, its
overlap and `sw_batch_size` (each run predicts with its own), the evaluated `regions` and the
file ending (evaluation takes both from the dataset it scores).

A case is preprocessed once, then each run's probabilities `(K, D, H, W)` are added into one
running sum and dropped, so memory holds the image, the sum and the current run's output, never
N probability volumes. All the runs' models stay loaded (on the device) for the whole command:
building a model means rebuilding its backbone and reading its weights (pre-trained backbones
from their file), which would otherwise repeat for every case and run, while one model is small
beside one volume's probabilities (the demo's EfficientNet-Lite0 + Med-Adapter: 3.5M parameters, 14 MB;
ViT-B/16 + UPerNet: ~100M, 0.4 GB; the probabilities of a 512 x 512 x 300 CT with 3 classes:
0.94 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune.core.errors import MedtuneInputError
from medtune.data.props import DatasetProps
from medtune.inference.options import InferenceOptions
from medtune.inference.predictor import CasePrediction, Predictor, load_predictor, model_props

MAY_DIFFER = ("regions", "file_ending")
"""`DatasetProps` keys the runs of an ensemble may disagree on."""
_WHAT = {
    "name": "dataset",
    "channel_names": "channels",
    "labels": "label set",
    "modality": "modality",
    "spacing": "target spacing",
    "normalisation": "normalisation",
}


def _comparable(props: DatasetProps) -> dict[str, Any]:
    d = props.to_dict()
    for key in MAY_DIFFER:
        d.pop(key, None)
    conventions = dict(d.pop("medtune", None) or {})
    conventions.pop("regions", None)
    d.update({f"medtune.{k}": v for k, v in conventions.items()})
    return d


def check_same_data(props: list[DatasetProps], sources: list[str]) -> None:
    """Raise (one line naming the run) unless every run has the dataset, channels, labels,
    conventions and preprocessing of the first (see the module docstring)."""
    ref = _comparable(props[0])
    for p, src in zip(props[1:], sources[1:]):
        d = _comparable(p)
        for key in sorted(set(ref) | set(d)):
            if ref.get(key) != d.get(key):
                what = _WHAT.get(key, key)
                raise MedtuneInputError(
                    f"{src}: expected a run of the data of {sources[0]} (same {what}: "
                    f"{ref.get(key)!r}), found {d.get(key)!r}; an ensemble averages runs of one "
                    "dataset, label set and preprocessing"
                )


def ensemble_props(paths: list[str | Path]) -> DatasetProps:
    """The common dataset properties of the runs `paths`, checked without building a model."""
    if len(paths) < 2:
        raise MedtuneInputError(
            f"ensemble: expected at least 2 runs or adapter folders, found {len(paths)}"
        )
    props = [model_props(p) for p in paths]
    check_same_data(props, [str(p) for p in paths])
    return props[0]


@dataclass
class EnsemblePredictor:
    """Several `Predictor`s of one dataset used as one: the mean of their softmax.

    Quacks like `Predictor` where prediction and evaluation use it (`props`, `infer_case`,
    `predict_probs`, `source`, `device`)."""

    members: list[Predictor]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise MedtuneInputError(
                f"ensemble: expected at least 2 models, found {len(self.members)}"
            )
        check_same_data([m.props for m in self.members], [m.source for m in self.members])

    @property
    def props(self) -> DatasetProps:
        return self.members[0].props

    @property
    def source(self) -> str:
        return " + ".join(m.source for m in self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def predict_probs(
        self, image: np.ndarray | torch.Tensor, tta: str = "none", progress: bool = False
    ) -> torch.Tensor:
        """Mean probabilities `(K, D, H, W)` float32 (CPU) of the members for a preprocessed
        image `(C, D, H, W)`: one running sum, each member's output dropped once added."""
        total = None
        with torch.inference_mode():  # the members' outputs are inference tensors
            for member in self.members:
                probs = member.predict_probs(image, tta=tta, progress=progress)
                if total is None:
                    total = probs
                else:
                    total += probs
                del probs
            assert total is not None
            total /= len(self.members)
        return total

    def infer_case(
        self,
        files: list[Path],
        tta: str = "none",
        progress: bool = False,
        nonfinite: str = "error",
    ) -> CasePrediction:
        """Preprocess one case once (the members share the preprocessing) and predict it with
        the mean softmax of the members (see `Predictor.infer_case`)."""
        from medtune.inference.sliding_window import probs_to_labels

        image, meta = self.members[0].prepare_case(files, nonfinite=nonfinite)
        probs = self.predict_probs(image, tta=tta, progress=progress)
        del image
        return CasePrediction(probs, probs_to_labels(probs), meta)

    def protocol(self) -> dict[str, Any]:
        """The members' sources, windows and overlaps, for reports."""
        return {
            "models": [m.source for m in self.members],
            "window": [list(m.window) for m in self.members],
            "overlap": [round(m.overlap, 6) for m in self.members],
        }


def load_ensemble(
    paths: list[str | Path],
    device: str | None = "cpu",
    sw_batch_size: int | None = None,
    options: InferenceOptions | None = None,
) -> EnsemblePredictor:
    """Check that the runs `paths` share their data (before building any model), then load
    each of them onto `device` (all stay loaded; see the module docstring)."""
    ensemble_props(list(paths))
    return EnsemblePredictor([load_predictor(p, device, sw_batch_size, options) for p in paths])
