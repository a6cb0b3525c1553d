"""Token sequences the model trains on, and their collation into batches.

Stage-1 sequence of one caption/image pair::

    <s> prompt caption [IMG0] [IMG1] .. [IMG7] </s>

Text loss covers the caption, ``[IMG0]`` and ``</s>``. ``[IMG1]..[IMG7]`` carry no
loss: at inference the model only has to emit ``[IMG0]``; generation then appends
the other seven itself, so training them as predictions would teach nothing used.
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


def voken_block(voken_ids: list[int]) -> tuple[list[int], list[int]]:
    """The vokens and their labels: only the first voken is a prediction target."""
    labels = [voken_ids[0]] + [IGNORE_INDEX] * (len(voken_ids) - 1)
    return list(voken_ids), labels


def encode_caption(
    tokenizer: PreTrainedTokenizerBase,
    caption: str,
    voken_ids: list[int],
    *,
    max_length: int,
    prompt: str = "",
    with_image: bool = True,
) -> Example:
    """Tokenize one caption (optionally followed by its image's vokens and the end marker).

    Captions too long for ``max_length`` are cut at the end of the caption text, never
    in the vokens; ``truncated`` says so, for the caller to count.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
    caption_ids = tokenizer(caption, add_special_tokens=False).input_ids
    tail, tail_labels = voken_block(voken_ids) if with_image else ([], [])
    if with_image:
        tail, tail_labels = tail + [tokenizer.eos_token_id], tail_labels + [tokenizer.eos_token_id]
    room = max_length - len(bos) - len(prompt_ids) - len(tail)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for the caption after prompt and vokens")
    truncated = len(caption_ids) > room
    caption_ids = caption_ids[:room]
    input_ids = bos + prompt_ids + caption_ids + tail
    labels = [IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + caption_ids + tail_labels
    return Example(input_ids, labels, truncated)


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


def encode_interleaved(
    tokenizer: PreTrainedTokenizerBase,
    context: list[Turn],
    target: Turn,
    voken_ids: list[int],
    *,
    image_token_id: int,
    image_tokens: int,
    max_length: int,
    prompt: str = "",
) -> InterleavedExample:
    """``<s> prompt (text <ImageHere>*k per image)* target_text ([IMG0]..[IMG7] per image) </s>``.

    Context images are input-side (``image_tokens`` placeholders each); target images are
    generated (a voken block each). Text loss covers the target text, each ``[IMG0]`` and
    the end marker. Too long: the oldest context turns are dropped, whole, never the
    target; ``truncated`` says so. A target that cannot fit alone raises SequenceTooLong.
    """
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    head = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids(prompt)
    turns = [ids(t.text) + [image_token_id] * (image_tokens * t.images) for t in context]
    tail, tail_labels = ids(target.text), ids(target.text)
    for _ in range(target.images):
        block, block_labels = voken_block(voken_ids)
        tail, tail_labels = tail + block, tail_labels + block_labels
    tail, tail_labels = tail + [tokenizer.eos_token_id], tail_labels + [tokenizer.eos_token_id]

    first = 0
    while len(head) + sum(len(t) for t in turns[first:]) + len(tail) > max_length:
        if first == len(turns):
            raise SequenceTooLong(
                f"target of {len(tail)} tokens does not fit in max_length {max_length} after {len(head)} prompt tokens"
            )
        first += 1
    context_ids = [token for turn in turns[first:] for token in turn]
    input_ids = head + context_ids + tail
    labels = [IGNORE_INDEX] * (len(head) + len(context_ids)) + tail_labels
    return InterleavedExample(input_ids, labels, truncated=first > 0, first_context_turn=first)
