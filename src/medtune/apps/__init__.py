"""What `medtune evaluate` and `medtune predict` run, callable from Python.

- `load_predictor(run_or_adapter_dir, device)`: the trained model plus its window, overlap and
  dataset properties (`loading`).
- `evaluate_run(run_dir, data_dir, fold, split, tta, postprocess, out) -> summary dict`, and
  `evaluate_predictor` for any `Predictor` (e.g. a non-learned baseline) (`evaluate`).
- `predict_files(run_or_adapter_dir, inputs, out_dir, device, tta, save_probabilities,
  overwrite) -> [OUT/CASE.nii.gz, ...]` (`predict`).

See docs/inference.md.
"""

from medtune.apps.evaluate import evaluate_predictor, evaluate_run, select_cases
from medtune.apps.loading import Predictor, load_predictor, resolve_device
from medtune.apps.predict import find_cases, predict_files

__all__ = [
    "Predictor",
    "evaluate_predictor",
    "evaluate_run",
    "find_cases",
    "load_predictor",
    "predict_files",
    "resolve_device",
    "select_cases",
]
