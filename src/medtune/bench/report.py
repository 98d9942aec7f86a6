"""Bench results as a Markdown table (one row per measured config and precision)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RESULT_KEYS = (
    "config",
    "method",
    "device",
    "device_name",
    "precision",
    "batch",
    "crop",
    "total",
    "tuned",
    "inserted",
    "steps",
    "warmup",
    "step_s",
    "step_min_s",
    "step_max_s",
    "floor_s",
    "step_over_floor",
    "floor_forward_s",
    "floor_backward_s",
    "compare",
    "compare_step_s",
    "step_over_compare",
    "peak_memory_gib",
    "peak_memory_kind",
    "window",
    "overlap",
    "volume",
    "window_s",
    "volume_s",
    "volume_flip8_s",
    "sw_batch_size",
    "fuse",
)
"""Keys of one result row (`medtune bench --json`); seconds are medians, None: not measured."""


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10**-digits or v == 0 else f"{v:.2e}"
    return str(v)


def _size(v: Sequence[int] | None) -> str:
    return "-" if v is None else "x".join(map(str, v))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of result rows (seconds to 3 digits; `-`: not measured)."""
    head = [
        "config",
        "method",
        "precision",
        "batch x crop",
        "total",
        "tuned",
        "step s (min-max)",
        "floor s",
        "step/floor",
        "step/compare",
        "peak GiB",
        "window s",
        "volume",
        "volume s",
        "flip8 s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        compare = (
            "-"
            if r.get("step_over_compare") is None
            else f"{_num(r['step_over_compare'])} ({r.get('compare')})"
        )
        cells = [
            str(r.get("config") or "-"),
            str(r["method"]),
            str(r["precision"]),
            f"{r['batch']} x {_size(r['crop'])}",
            _millions(r["total"]),
            _millions(r["tuned"]),
            f"{_num(r['step_s'])} ({_num(r['step_min_s'])}-{_num(r['step_max_s'])})",
            _num(r["floor_s"]),
            _num(r["step_over_floor"], 2),
            compare,
            _num(r["peak_memory_gib"]),
            _num(r["window_s"]),
            _size(r["volume"]) if r.get("volume_s") is not None else "-",
            _num(r["volume_s"]),
            _num(r["volume_flip8_s"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption(rows: Sequence[dict[str, Any]]) -> str:
    """One line under the table: the device(s) and how memory was read."""
    devices = sorted({r["device_name"] for r in rows})
    kinds = sorted({r["peak_memory_kind"] for r in rows})
    return (
        f"Device: {', '.join(devices)}. Peak memory: {', '.join(kinds)} of the training step. "
        "Seconds: medians over the timed steps; the volume (sliding windows, the config's "
        "window and overlap) once."
    )
