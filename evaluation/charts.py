"""Charts drawn with PIL (no plotting library needed): grouped bars (one PNG per results table) and
lines (a score against a setting, one line per series)."""

from __future__ import annotations

import math
from typing import Optional

from PIL import Image, ImageDraw

PALETTE = [(66, 103, 178), (230, 126, 34), (46, 160, 67), (192, 57, 43), (142, 68, 173), (127, 140, 141)]


def bar_chart(
    title: str, groups: list[str], series: dict[str, list[Optional[float]]], width: int = 900, height: int = 420
) -> Image.Image:
    """Bars of values in [0, 1]: one group per entry of ``groups`` (a metric), one bar per series
    (a row of the table) in each group; a missing value (None) leaves its bar out."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 10, 30, height - 90
    draw.text((left, 8), title, fill="black")
    _y_axis(draw, left, right, top, bottom)
    slot = (right - left) / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        for s, values in enumerate(series.values()):
            value = values[g]
            if value is None:
                continue
            x = x0 + s * bar
            draw.rectangle((x, bottom - (bottom - top) * max(0.0, min(1.0, value)), x + bar - 2, bottom),
                           fill=PALETTE[s % len(PALETTE)])
        draw.text((x0, bottom + 4), group[:int(slot / 6)], fill="black")
    _legend(draw, list(series), left, bottom + 24)
    return image


def _legend(draw: ImageDraw.ImageDraw, names: list[str], left: int, top: int) -> None:
    for s, name in enumerate(names):  # four rows a column
        y = top + 14 * (s % 4)
        x = left + (s // 4) * 300
        draw.rectangle((x, y, x + 10, y + 10), fill=PALETTE[s % len(PALETTE)])
        draw.text((x + 14, y - 1), name[:45], fill="black")


def _y_axis(
    draw: ImageDraw.ImageDraw, left: int, right: int, top: int, bottom: int, y_range: tuple[float, float] = (0.0, 1.0)
) -> None:
    low, high = y_range
    digits = max(0, -math.floor(math.log10((high - low) / 5)))  # enough to tell neighbouring ticks apart
    for tick in range(0, 11, 2):  # six ticks, low .. high
        y = bottom - (bottom - top) * tick / 10
        draw.line((left - 4, y, right, y), fill=(225, 225, 225))
        draw.text((4, y - 6), f"{low + (high - low) * tick / 10:.{digits}f}", fill="black")


def line_chart(
    title: str, x_label: str, xs: list[float], series: dict[str, list[Optional[float]]],
    width: int = 900, height: int = 420, y_range: tuple[float, float] = (0.0, 1.0),
) -> Image.Image:
    """Lines of values in ``y_range`` (default [0, 1]; values outside sit at its edge) against ``xs``
    (ticks at each x, spaced by value): one line and marker set per entry of ``series``; a missing
    value (None) breaks its line there."""
    if not xs or any(len(v) != len(xs) for v in series.values()):
        raise ValueError(f"line_chart: every series needs one value per x ({len(xs)})")
    if not y_range[0] < y_range[1]:
        raise ValueError(f"line_chart: y_range needs low < high, got {y_range}")
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 20, 30, height - 90
    draw.text((left, 8), title, fill="black")
    _y_axis(draw, left, right, top, bottom, y_range)
    low, high = min(xs), max(xs)

    def at(x: float, value: float) -> tuple[float, float]:
        fx = (x - low) / (high - low) if high > low else 0.5
        fy = (value - y_range[0]) / (y_range[1] - y_range[0])
        return left + fx * (right - left), bottom - (bottom - top) * max(0.0, min(1.0, fy))

    for x in xs:
        draw.text((at(x, 0)[0] - 6, bottom + 4), f"{x:g}", fill="black")
    draw.text((right - 6 * len(x_label), bottom + 4 + 12), x_label, fill="black")
    for s, values in enumerate(series.values()):
        colour = PALETTE[s % len(PALETTE)]
        points = [at(x, v) if v is not None else None for x, v in zip(xs, values)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line((a, b), fill=colour, width=2)
        for point in points:
            if point is not None:
                draw.ellipse((point[0] - 3, point[1] - 3, point[0] + 3, point[1] + 3), fill=colour)
    _legend(draw, list(series), left, bottom + 36)
    return image
