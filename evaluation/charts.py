"""Grouped bar charts drawn with PIL (no plotting library needed): one PNG per results table."""

from __future__ import annotations

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
    for tick in range(0, 11, 2):  # y axis: 0 .. 1
        y = bottom - (bottom - top) * tick / 10
        draw.line((left - 4, y, right, y), fill=(225, 225, 225))
        draw.text((8, y - 6), f"{tick / 10:.1f}", fill="black")
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
    for s, name in enumerate(series):  # legend, under the axis
        y = bottom + 24 + 14 * (s % 4)
        x = left + (s // 4) * 300
        draw.rectangle((x, y, x + 10, y + 10), fill=PALETTE[s % len(PALETTE)])
        draw.text((x + 14, y - 1), name[:45], fill="black")
    return image
