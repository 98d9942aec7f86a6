"""Evaluation: per-region metrics, reports, and `medtune evaluate`.

- `metrics`: `compute_case_metrics` (Dice, HD95 in mm `directed` or `pooled`, area-weighted
  surface Dice per region, empty-mask policy),
  `image_diagonal_mm`, `brats_postprocess`.
- `report`: `case_row`, `summarize`, `write_reports` (per-case CSV, summary JSON, Markdown).
- `evaluate`: `evaluate_run(run_dir, data_dir, ...)` and `evaluate_predictor` for any
  `Predictor` (e.g. a non-learned baseline).
- `folder`: `evaluate_folder(pred_dir, ref_dir, dataset_json, ...)` scores label maps written
  by any tool (`medtune evaluate-folder`).
"""

from medtune.evaluation.evaluate import evaluate_predictor, evaluate_run, select_cases
from medtune.evaluation.folder import evaluate_folder
from medtune.evaluation.metrics import (
    HD95_MODES,
    METRICS,
    brats_postprocess,
    compute_case_metrics,
    image_diagonal_mm,
)
from medtune.evaluation.report import case_row, summarize, write_reports

__all__ = [
    "HD95_MODES",
    "METRICS",
    "brats_postprocess",
    "case_row",
    "compute_case_metrics",
    "evaluate_folder",
    "evaluate_predictor",
    "evaluate_run",
    "image_diagonal_mm",
    "select_cases",
    "summarize",
    "write_reports",
]
