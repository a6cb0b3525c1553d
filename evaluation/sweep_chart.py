"""The guidance sweep of ``minigpt5 eval`` as a picture: each metric against the guidance scale,
one line per system, one panel per metric, drawn with :func:`evaluation.charts.line_chart`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from evaluation.charts import line_chart
from evaluation.report import metric_columns, metric_value

SWEEP_PLOT = "guidance_sweep.png"  # written next to results.md
PANEL = (600, 320)  # one metric's panel: width, height
COLUMNS = 2  # panels side by side


@dataclass(frozen=True)
class Sweep:
    """Measured rows as plot data: the guidance scales (ascending) and, per metric and system,
    the value at each scale (None where the system has none)."""

    scales: list[float]
    metrics: dict[str, dict[str, list[Optional[float]]]]


def _number(metric: Any) -> Optional[float]:
    value = metric_value(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def sweep_of(rows: list[dict[str, Any]]) -> Sweep:
    """The sweep in the result rows: measured rows only (quoted figures have no guidance scale);
    every score column but the item count, each with a value somewhere."""
    runs = [row for row in rows if row["kind"] == "run"]
    scales = sorted({float(row["settings"]["guidance_scale"]) for row in runs})
    metrics = {}
    for metric in metric_columns(runs):
        if metric == "items":
            continue
        series: dict[str, list[Optional[float]]] = {}
        for row in runs:
            values = series.setdefault(row["system"], [None] * len(scales))
            values[scales.index(float(row["settings"]["guidance_scale"]))] = _number(row["metrics"].get(metric))
        if any(v is not None for values in series.values() for v in values):
            metrics[metric] = series
    return Sweep(scales, metrics)


def value_range(values: list[float]) -> tuple[float, float]:
    """[0, 1] for scores inside it; otherwise the values' span padded by a tenth (a flat line by a tenth
    of its value, at least 1)."""
    if all(0.0 <= v <= 1.0 for v in values):
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) / 10 or max(abs(high) / 10, 1.0)
    return low - pad, high + pad


def sweep_chart(sweep: Sweep) -> Image.Image:
    """One panel per metric, :data:`COLUMNS` to a row, each a line per system against guidance scale."""
    panels = []
    for metric, series in sweep.metrics.items():
        values = [v for line in series.values() for v in line if v is not None]
        panels.append(line_chart(metric, "guidance scale", sweep.scales, series, *PANEL, y_range=value_range(values)))
    width, height = PANEL
    image = Image.new("RGB", (width * COLUMNS, height * math.ceil(len(panels) / COLUMNS)), "white")
    for i, panel in enumerate(panels):
        image.paste(panel, ((i % COLUMNS) * width, (i // COLUMNS) * height))
    return image


def write_sweep_plot(out: Path, rows: list[dict[str, Any]]) -> Optional[Path]:
    """``out/guidance_sweep.png`` when the rows were measured at two or more guidance scales;
    otherwise nothing is written and None returned."""
    sweep = sweep_of(rows)
    if len(sweep.scales) < 2 or not sweep.metrics:
        return None
    path = Path(out) / SWEEP_PLOT
    sweep_chart(sweep).save(path)
    return path
