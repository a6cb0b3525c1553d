"""Token sequences the model trains on, and their collation into batches.

How an example is worded into a sequence (and which tokens carry text loss) is the
prompt template's business, :mod:`minigpt5.templates`; this module holds the encoded
examples and pads them into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from minigpt5.losses import IGNORE_INDEX


@dataclass
class Example:
    """One tokenized training sequence."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    source_length: int = 0  # input_ids[:source_length] is what the model reads before the target


def pad_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example -> input_ids, attention_mask, labels (B, T)."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_for_text_encoder(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_length: int) -> torch.Tensor:
    """SD text-encoder ids, padded and truncated to ``max_length`` -> (N, max_length)."""
    return tokenizer(
        captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids


class SequenceTooLong(ValueError):
    """The target alone does not fit in ``max_length``; the example cannot be used."""


@dataclass
class Turn:
    """One step of an interleaved sequence: its text, then ``images`` images."""

    text: str
    images: int = 0


@dataclass
class InterleavedExample(Example):
    """An interleaved sequence; context turns before ``first_context_turn`` were dropped to fit."""

    first_context_turn: int = 0
