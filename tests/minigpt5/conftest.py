"""Fixtures of the model package's tests."""

from __future__ import annotations

import pytest
import torch

from minigpt5.builders import build_llm_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.sequences import tokenize_for_text_encoder
from minigpt5.vision import IMAGE_TOKEN


@pytest.fixture(scope="module")
def tok():
    """The tiny preset's tokenizer, its voken ids and the image placeholder's id."""
    tokenizer, voken_ids = build_llm_tokenizer(MiniGPT5Config())
    return tokenizer, voken_ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


CAPTIONS = ["a red circle", "a blue square on the left"]


@pytest.fixture(scope="session")
def stage1_batch():
    """model -> a stage-1 batch for it: two captions with their vokens, 16 px targets, SD caption ids."""
    def make(model):
        batch = model.caption_batch(CAPTIONS)
        batch["target_pixels"] = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        batch["caption_ids"] = tokenize_for_text_encoder(model.sd_tokenizer, CAPTIONS, 77)
        return batch
    return make
