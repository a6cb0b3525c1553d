"""The PIL charts: a line per series at its values, bars per group, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.charts import PALETTE, bar_chart, line_chart


def _has(image, colour) -> bool:
    return bool((np.asarray(image) == np.array(colour, dtype=np.uint8)).all(axis=-1).any())


def test_line_chart_draws_each_series_and_breaks_at_missing_values():
    chart = line_chart("score", "steps", [5, 10, 50], {"a": [0.2, 0.5, 0.9], "b": [None, 0.4, None]})
    assert chart.size == (900, 420)
    assert _has(chart, PALETTE[0]) and _has(chart, PALETTE[1])
    # a line rises with its values: the top-most pixel of series a sits at the right, at 0.9
    ys, xs = np.nonzero((np.asarray(chart) == np.array(PALETTE[0], dtype=np.uint8)).all(axis=-1)[:330])
    assert xs[ys.argmin()] > 800
    lone = line_chart("one x", "steps", [1], {"a": [0.5]})  # a single x sits mid-axis
    assert _has(lone, PALETTE[0])
    with pytest.raises(ValueError, match="one value per x"):
        line_chart("bad", "steps", [1, 2], {"a": [0.5]})


def test_bar_chart_draws_a_bar_per_series():
    chart = bar_chart("scores", ["text", "colour"], {"a": [0.5, 1.0], "b": [0.2, None]})
    assert _has(chart, PALETTE[0]) and _has(chart, PALETTE[1])
