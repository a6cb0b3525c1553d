"""Fixtures of the model package's tests."""

from __future__ import annotations

import pytest

from minigpt5.builders import build_llm_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.vision import IMAGE_TOKEN


@pytest.fixture(scope="module")
def tok():
    """The tiny preset's tokenizer, its voken ids and the image placeholder's id."""
    tokenizer, voken_ids = build_llm_tokenizer(MiniGPT5Config())
    return tokenizer, voken_ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
