"""Interleaved sequences: layout, label masking (text loss only on the target), truncation."""

from __future__ import annotations

import pytest

from minigpt5.config import MiniGPT5Config
from minigpt5.losses import IGNORE_INDEX
from minigpt5.sequences import SequenceTooLong, Turn
from minigpt5.templates import Conversation, build_template

K = 3  # placeholder tokens per context image


def encode(tok, context, target, max_length=64):
    """A story step under the plain template (the tiny default)."""
    tokenizer, voken_ids, image_id = tok
    template = build_template(MiniGPT5Config(), tokenizer, voken_ids, image_id, image_tokens=K)
    return template.encode(Conversation("story", target, context), max_length)


def words(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_layout_and_labels_cover_only_the_target(tok):
    tokenizer, voken_ids, image_id = tok
    context = [Turn("a red circle", images=1), Turn("then a blue square", images=1)]
    ex = encode(tok, context, Turn("finally a green star", images=1))
    expected = ([tokenizer.bos_token_id] + words(tokenizer, "a red circle") + [image_id] * K
                + words(tokenizer, "then a blue square") + [image_id] * K
                + words(tokenizer, "finally a green star") + voken_ids + [tokenizer.eos_token_id])
    assert ex.input_ids == expected and not ex.truncated and ex.first_context_turn == 0
    start = len(expected) - len(voken_ids) - 1 - len(words(tokenizer, "finally a green star"))
    assert all(label == IGNORE_INDEX for label in ex.labels[:start])  # context and images: no text loss
    target_text = words(tokenizer, "finally a green star")
    assert ex.labels[start:start + len(target_text)] == target_text
    block = ex.labels[start + len(target_text):]
    assert block[0] == voken_ids[0] and all(b == IGNORE_INDEX for b in block[1:8]) and block[8] == tokenizer.eos_token_id


def test_text_only_context_and_text_only_target(tok):
    tokenizer, voken_ids, image_id = tok
    ex = encode(tok, [Turn("hello there")], Turn("hi"))
    assert image_id not in ex.input_ids and not set(voken_ids) & set(ex.input_ids)
    assert ex.input_ids[-1] == tokenizer.eos_token_id and ex.labels[-1] == tokenizer.eos_token_id


def test_several_target_images_get_a_voken_block_each(tok):
    _, voken_ids, _ = tok
    ex = encode(tok, [], Turn("two pictures", images=2))
    assert ex.input_ids.count(voken_ids[0]) == 2 and ex.labels.count(voken_ids[0]) == 2


def test_too_long_drops_oldest_context_turns_never_the_target(tok):
    tokenizer, voken_ids, image_id = tok
    context = [Turn("one two three four five six", images=1), Turn("seven eight", images=1), Turn("nine", images=1)]
    target = Turn("the target text", images=1)
    full = encode(tok, context, target, max_length=200)
    newest_two = encode(tok, context[1:], target, max_length=200)
    ex = encode(tok, context, target, max_length=len(newest_two.input_ids))
    assert len(full.input_ids) > len(ex.input_ids) and ex.truncated and ex.first_context_turn == 1
    assert ex.input_ids == newest_two.input_ids  # whole oldest turn (and its image) dropped
    assert ex.input_ids.count(image_id) == 2 * K
    only_target = encode(tok, [], target, max_length=200)
    assert encode(tok, context, target, max_length=len(only_target.input_ids)).first_context_turn == 3


def test_target_that_cannot_fit_raises(tok):
    with pytest.raises(SequenceTooLong, match="does not fit in max_length 12"):
        encode(tok, [Turn("context")], Turn("a rather long target sentence", images=1), max_length=12)
