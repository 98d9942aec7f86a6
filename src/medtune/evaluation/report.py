"""Per-case rows -> summary statistics -> `per_case.csv`, `summary.json`, `summary.md`.

Row format (one dict per case)::

    {"case_id": "BraTS19_001", "WT/dice": 0.91, "WT/hd95": 3.2, "WT/nsd": 0.95, "TC/dice": ...}

`case_row` builds it from `compute_case_metrics`' output. Keys containing ``/`` are metric
columns ``<region>/<metric>``; other keys (``case_id``, and anything a caller adds) are only
copied into the CSV. Every row must carry the same metric columns, with finite values.

Summary format (what `summarize` returns and `summary.json` holds)::

    {"n_cases": 125,
     "metrics": {"WT": {"dice": {"mean": .., "std": .., "median": .., "n": 125}, ...}, ...}}

`std` is the sample standard deviation over cases (``ddof=1``; 0.0 for a single case). A
caller may add keys to the summary (e.g. the run directory, TTA mode); they are written to the
JSON and listed under the Markdown table. Every file is written to a temporary name in
`out_dir` and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtune.core.atomic import atomic_write_text
from medtune.core.errors import MedtuneInputError

PER_CASE_CSV = "per_case.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def case_row(case_id: str, case_metrics: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Flatten ``{region: {metric: value}}`` of one case into a report row."""
    row: dict[str, Any] = {"case_id": str(case_id)}
    for region, metrics in case_metrics.items():
        for metric, value in metrics.items():
            row[f"{region}/{metric}"] = float(value)
    return row


def _metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        raise MedtuneInputError("per-case rows: expected at least one case, found none")
    columns = [k for k in rows[0] if "/" in k]
    if not columns:
        raise MedtuneInputError(
            f"per-case rows: expected '<region>/<metric>' columns, found keys {list(rows[0])}"
        )
    expected = set(columns)
    for i, row in enumerate(rows):
        case = row.get("case_id", f"row {i}")
        found = {k for k in row if "/" in k}
        if found != expected:
            missing = sorted(expected - found)
            extra = sorted(found - expected)
            raise MedtuneInputError(
                f"case {case}: expected the metric columns of the first case; missing {missing}, extra {extra}"
            )
        for k in columns:
            v = row[k]
            if not isinstance(v, int | float | np.floating | np.integer) or not math.isfinite(v):
                raise MedtuneInputError(f"case {case}: {k} must be a finite number, found {v!r}")
    return columns


def summarize(per_case_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample std, median and count of every `<region>/<metric>` column over cases.

    Returns:
        ``{"n_cases": N, "metrics": {region: {metric: {"mean", "std", "median", "n"}}}}``,
        regions and metrics in the order of the first row's columns.
    """
    columns = _metric_columns(per_case_rows)
    metrics: dict[str, dict[str, dict[str, float | int]]] = {}
    for col in columns:
        region, metric = col.rsplit("/", 1)
        values = np.array([float(r[col]) for r in per_case_rows], dtype=np.float64)
        metrics.setdefault(region, {})[metric] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "median": float(np.median(values)),
            "n": int(len(values)),
        }
    return {"n_cases": len(per_case_rows), "metrics": metrics}


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    header: list[str] = []
    for row in rows:  # union of keys, first-seen order (extra caller columns included)
        header.extend(k for k in row if k not in header)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (repr(float(v)) if isinstance(v, float | np.floating) else v)
                for k, v in row.items()
            }
        )
    return buf.getvalue()


def _fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric.startswith("hd") else f"{value:.4f}"


def _column(metric: str, summary: Mapping[str, Any]) -> str:
    """Column head of `metric`, naming the HD95 definition and NSD tolerance the summary used."""
    if metric == "hd95" and summary.get("hd95"):
        return f"hd95 {summary['hd95']} (mm)"
    if metric == "nsd" and summary.get("nsd_tolerance_mm") is not None:
        return f"nsd @ {float(summary['nsd_tolerance_mm']):g} mm"
    return f"{metric} (mm)" if metric.startswith("hd") else metric


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: one row per region, one column per metric, cells
    ``mean ± std (median m)``; HD in mm with 2 decimals, the others with 4. When the summary
    holds them, the heads name the HD95 definition (``hd95``) and the NSD tolerance
    (``nsd_tolerance_mm``): ``| region | dice | hd95 directed (mm) | nsd @ 1 mm |``."""
    metrics = summary.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        raise MedtuneInputError("summary: expected a 'metrics' entry as returned by summarize()")
    names: list[str] = []
    for per_region in metrics.values():
        names.extend(m for m in per_region if m not in names)
    head = [_column(m, summary) for m in names]
    lines = [
        "| region | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(names),
    ]
    for region, per_region in metrics.items():
        cells = []
        for m in names:
            s = per_region.get(m)
            cells.append(
                "-"
                if s is None
                else f"{_fmt(m, s['mean'])} ± {_fmt(m, s['std'])} (median {_fmt(m, s['median'])})"
            )
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(summary: Mapping[str, Any]) -> str:
    parts = [
        f"# Evaluation summary\n\n{summary.get('n_cases', '?')} cases; mean ± std (median).\n\n"
    ]
    parts.append(markdown_table(summary))
    extra = {k: v for k, v in summary.items() if k not in ("n_cases", "metrics")}
    if extra:
        parts.append("\n")
        for k, v in extra.items():
            if isinstance(v, Mapping) and v:  # e.g. skipped cases: one nested item each
                parts.append(f"- {k}:\n" + "".join(f"  - {sk}: {sv}\n" for sk, sv in v.items()))
            else:
                parts.append(f"- {k}: {v}\n")
    return "".join(parts)


def write_reports(
    per_case_rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
) -> dict[str, Path]:
    """Write `per_case.csv`, `summary.json` and `summary.md` into `out_dir` (created if
    missing), each atomically.

    Returns:
        ``{"per_case": path, "summary_json": path, "summary_md": path}``.
    """
    _metric_columns(per_case_rows)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MedtuneInputError(f"report folder {out}: expected a folder, found a file")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_case": out / PER_CASE_CSV,
        "summary_json": out / SUMMARY_JSON,
        "summary_md": out / SUMMARY_MD,
    }
    atomic_write_text(paths["per_case"], _csv_text(per_case_rows))
    atomic_write_text(paths["summary_json"], json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(paths["summary_md"], _markdown(summary))
    return paths
