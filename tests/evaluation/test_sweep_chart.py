"""The guidance sweep plot: one panel per metric, one line per system, written next to results.md."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evaluation.charts import PALETTE
from evaluation.sweep_chart import PANEL, SWEEP_PLOT, sweep_chart, sweep_of, value_range, write_sweep_plot


def row(system: str, scale: float, **metrics) -> dict:
    return {"system": system, "kind": "run", "settings": {"guidance_scale": scale}, "metrics": metrics}


ROWS = [
    row("MiniGPT-5", 1.0, fid=80.0, clip_i={"value": 0.5, "hits": 1, "count": 2}, items=6),
    row("Stable Diffusion 2", 1.0, fid=90.0, clip_i={"value": 0.4, "hits": 1, "count": 2}, items=6),
    row("MiniGPT-5", 7.5, fid=60.0, clip_i={"value": 0.7, "hits": 1, "count": 2}, items=6),
    row("Stable Diffusion 2", 7.5, fid=float("nan"), clip_i={"value": 0.6, "hits": 1, "count": 2}, items=6),
    {"system": "GILL", "kind": "quoted", "source": "paper", "metrics": {"fid": 12.0}},
]


def colours_in(image: Image.Image) -> set[tuple[int, int, int]]:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return {tuple(int(c) for c in colour) for colour in np.unique(pixels, axis=0)}


def test_the_sweep_holds_a_line_per_system_per_metric_from_the_measured_rows():
    sweep = sweep_of(ROWS)
    assert sweep.scales == [1.0, 7.5]
    assert list(sweep.metrics) == ["fid", "clip_i"]  # table order; no item count; quoted rows left out
    assert sweep.metrics["fid"] == {"MiniGPT-5": [80.0, 60.0], "Stable Diffusion 2": [90.0, None]}  # NaN: no point
    assert sweep.metrics["clip_i"] == {"MiniGPT-5": [0.5, 0.7], "Stable Diffusion 2": [0.4, 0.6]}


def test_value_range_keeps_scores_on_zero_to_one_and_spans_other_metrics():
    assert value_range([0.2, 0.9]) == (0.0, 1.0)
    assert value_range([60.0, 90.0]) == pytest.approx((57.0, 93.0))
    assert value_range([5.0, 5.0]) == pytest.approx((4.0, 6.0))


def test_the_plot_is_a_png_with_one_line_colour_per_system(tmp_path):
    path = write_sweep_plot(tmp_path, ROWS)
    assert path == tmp_path / SWEEP_PLOT
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size == (2 * PANEL[0], PANEL[1])  # two metrics, side by side
        colours = colours_in(image)
    assert PALETTE[0] in colours and PALETTE[1] in colours  # MiniGPT-5, SD2
    assert PALETTE[2] not in colours  # no third line: the quoted row is not a system of the sweep
    # the fid panel (left) draws both systems; MiniGPT-5's fid falls from 80 to 60: its lowest point is at the right
    fid_panel = np.asarray(sweep_chart(sweep_of(ROWS)).crop((0, 0, *PANEL)))[: PANEL[1] - 90]  # above the legend
    ys, xs = np.nonzero((fid_panel == np.array(PALETTE[0], dtype=np.uint8)).all(axis=-1))
    assert xs[ys.argmax()] > PANEL[0] * 0.9
    assert (fid_panel == np.array(PALETTE[1], dtype=np.uint8)).all(axis=-1).any()


def test_no_plot_without_a_sweep(tmp_path):
    assert write_sweep_plot(tmp_path, [r for r in ROWS if r.get("settings", {}).get("guidance_scale") == 1.0]) is None
    assert not (tmp_path / SWEEP_PLOT).exists()
