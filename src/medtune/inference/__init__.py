"""Inference: a trained model applied to whole volumes, results in the input's geometry.

- `predictor`: `Predictor` (model + window + overlap + dataset properties) and
  `load_predictor(run_or_adapter_dir, device)` (a list of several: an `EnsemblePredictor`).
- `ensemble`: `EnsemblePredictor`, the mean softmax of several runs of one dataset.
- `sliding_window`: `predict_volume` (MONAI sliding windows, flip TTA, CPU stitching) and
  `probs_to_labels`.
- `predict`: `predict_files(run_or_adapter_dir, inputs, out_dir, ...)`, label maps written with
  each input file's shape, affine and header (`medtune predict`).

See docs/inference.md.
"""

from medtune.inference.ensemble import EnsemblePredictor
from medtune.inference.predict import find_cases, predict_files
from medtune.inference.predictor import Predictor, load_predictor, resolve_device
from medtune.inference.sliding_window import predict_volume, probs_to_labels

__all__ = [
    "EnsemblePredictor",
    "Predictor",
    "find_cases",
    "load_predictor",
    "predict_files",
    "predict_volume",
    "probs_to_labels",
    "resolve_device",
]
