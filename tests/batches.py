"""Batches made in code for the tests (the ``caption_batch`` fixture, the distributed workers)."""

from __future__ import annotations

from typing import Optional

import torch


def make_caption_batch(
    model, captions: list[str], generator: Optional[torch.Generator] = None
) -> dict[str, torch.Tensor]:
    """A stage-1 batch: caption + vokens tokens, random target pixels in [-1, 1], SD caption ids."""
    from minigpt5.sequences import tokenize_for_text_encoder

    cfg = model.cfg
    res = cfg.diffusion.resolution
    batch = model.caption_batch(captions)
    batch["target_pixels"] = torch.rand(len(captions), 3, res, res, generator=generator) * 2 - 1  # (N, 3, H, W)
    batch["caption_ids"] = tokenize_for_text_encoder(model.sd_tokenizer, captions, cfg.diffusion.text_max_length)
    return batch
