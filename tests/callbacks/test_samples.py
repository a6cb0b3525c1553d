"""The guided sample-grid callback."""

from __future__ import annotations

import pytest
import torch

from callbacks.samples import SampleGrid
from lit_models.module import MiniGPT5Module


def test_grid_has_a_row_per_seed_and_a_column_per_caption_and_is_reproducible():
    torch.manual_seed(0)
    module = MiniGPT5Module()
    callback = SampleGrid(["a red circle", "a blue square", "a green triangle"], num_seeds=2, num_inference_steps=2)
    grid = callback.grid(module)
    res, pad = module.config.diffusion.resolution, 1
    assert grid.shape == (3, 2 * (res + pad) + pad, 3 * (res + pad) + pad)
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid, callback.grid(module))
    assert module.model.training  # the callback restores the training mode it found


@pytest.mark.parametrize("kwargs", [{"captions": []}, {"captions": ["x"], "every_n_steps": 0}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match="SampleGrid"):
        SampleGrid(**kwargs)
