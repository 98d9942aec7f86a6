"""Evaluation: per-region metrics, reports, and `medtune evaluate`.

- `metrics`: `compute_case_metrics` (Dice, HD95 in mm, NSD per region, empty-mask policy),
  `image_diagonal_mm`, `brats_postprocess`.
- `report`: `case_row`, `summarize`, `write_reports` (per-case CSV, summary JSON, Markdown).
- `evaluate`: `evaluate_run(run_dir, data_dir, ...)` and `evaluate_predictor` for any
  `Predictor` (e.g. a non-learned baseline).
"""

from medtune.evaluation.evaluate import evaluate_predictor, evaluate_run, select_cases
from medtune.evaluation.metrics import (
    METRICS,
    brats_postprocess,
    compute_case_metrics,
    image_diagonal_mm,
)
from medtune.evaluation.report import case_row, summarize, write_reports

__all__ = [
    "METRICS",
    "brats_postprocess",
    "case_row",
    "compute_case_metrics",
    "evaluate_predictor",
    "evaluate_run",
    "image_diagonal_mm",
    "select_cases",
    "summarize",
    "write_reports",
]
