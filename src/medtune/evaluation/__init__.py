"""Evaluation building blocks: sliding-window inference, per-region metrics, reports.

- `inference`: `predict_volume` (MONAI sliding windows, flip TTA, CPU stitching) and
  `probs_to_labels`.
- `metrics`: `compute_case_metrics` (Dice, HD95 in mm, NSD per region, empty-mask policy),
  `image_diagonal_mm`, `brats_postprocess`.
- `report`: `case_row`, `summarize`, `write_reports` (per-case CSV, summary JSON, Markdown).
"""

from medtune.evaluation.inference import predict_volume, probs_to_labels
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
    "image_diagonal_mm",
    "predict_volume",
    "probs_to_labels",
    "summarize",
    "write_reports",
]
