"""Token sequences: label masking, truncation, padding (the plain template's caption rows)."""

from __future__ import annotations

import pytest
import torch

from minigpt5.config import MiniGPT5Config, TemplateConfig, VokenConfig
from minigpt5.losses import IGNORE_INDEX
from minigpt5.sequences import Example, Turn, pad_examples, tokenize_for_text_encoder
from minigpt5.templates import Conversation, PlainTemplate
from minigpt5.tokenizer import build_tiny_tokenizer
from minigpt5.vokens import add_voken_tokens


@pytest.fixture
def tok_and_vokens():
    tok = build_tiny_tokenizer()
    ids = add_voken_tokens(tok, VokenConfig(), len(tok))
    return tok, ids


def encode_caption(tok, caption, vokens, *, max_length, prompt=""):
    """A caption row under the plain template (image placeholder id unused: no context)."""
    template = PlainTemplate(TemplateConfig(prompt=prompt), tok, vokens, image_token_id=-1)
    return template.encode(Conversation("caption", Turn("", 1), caption=caption), max_length)


def test_voken_block_labels_only_first_voken(tok_and_vokens):
    tok, vokens = tok_and_vokens
    ex = PlainTemplate(TemplateConfig(), tok, vokens, image_token_id=-1).encode(
        Conversation("story", Turn("", 2)), 64)
    assert ex.input_ids == [tok.bos_token_id] + vokens + vokens + [tok.eos_token_id]
    block = [vokens[0]] + [IGNORE_INDEX] * 7
    assert ex.labels == [IGNORE_INDEX] + block + block + [tok.eos_token_id]


def test_encode_caption_layout_and_labels(tok_and_vokens):
    tok, vokens = tok_and_vokens
    caption, prompt = "a red circle on the left", "image of"
    cap_ids = tok(caption, add_special_tokens=False).input_ids
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    assert len(cap_ids) >= 3 and len(prompt_ids) >= 1
    ex = encode_caption(tok, caption, vokens, max_length=64, prompt=prompt)
    assert not ex.truncated
    assert len(ex.input_ids) == len(ex.labels)
    assert ex.input_ids == [tok.bos_token_id] + prompt_ids + cap_ids + vokens + [tok.eos_token_id]
    n_pre = 1 + len(prompt_ids)
    assert ex.labels[:n_pre] == [IGNORE_INDEX] * n_pre  # bos and prompt masked
    assert ex.labels[n_pre:n_pre + len(cap_ids)] == cap_ids  # caption labelled
    v0 = n_pre + len(cap_ids)
    assert ex.labels[v0] == vokens[0]  # [IMG0] labelled
    assert ex.labels[v0 + 1:v0 + 8] == [IGNORE_INDEX] * 7  # [IMG1..IMG7] masked
    assert ex.labels[-1] == tok.eos_token_id  # eos labelled


def test_encode_caption_source_is_what_comes_before_the_image(tok_and_vokens):
    tok, vokens = tok_and_vokens
    ex = encode_caption(tok, "a dog", vokens, max_length=32)
    cap_ids = tok("a dog", add_special_tokens=False).input_ids
    assert ex.input_ids[:ex.source_length] == [tok.bos_token_id] + cap_ids
    assert not any(i in vokens for i in ex.input_ids[:ex.source_length])


def test_truncation_cuts_caption_never_vokens(tok_and_vokens):
    tok, vokens = tok_and_vokens
    caption = " ".join(["red green blue yellow purple"] * 10)
    cap_ids = tok(caption, add_special_tokens=False).input_ids
    max_length = 20
    assert len(cap_ids) > max_length
    ex = encode_caption(tok, caption, vokens, max_length=max_length, prompt="image of")
    prompt_ids = tok("image of", add_special_tokens=False).input_ids
    assert ex.truncated
    assert len(ex.input_ids) == max_length
    assert ex.input_ids[-9:] == vokens + [tok.eos_token_id]
    room = max_length - 1 - len(prompt_ids) - 9
    assert ex.input_ids[1 + len(prompt_ids):-9] == cap_ids[:room]  # the caption's start survives
    assert ex.labels[-9:] == [vokens[0]] + [IGNORE_INDEX] * 7 + [tok.eos_token_id]


def test_exact_fit_is_not_truncated(tok_and_vokens):
    tok, vokens = tok_and_vokens
    cap_ids = tok("a red circle", add_special_tokens=False).input_ids
    exact = 1 + len(cap_ids) + 9
    ex = encode_caption(tok, "a red circle", vokens, max_length=exact)
    assert not ex.truncated and len(ex.input_ids) == exact
    ex = encode_caption(tok, "a red circle", vokens, max_length=exact - 1)
    assert ex.truncated and len(ex.input_ids) == exact - 1


def test_too_small_max_length_raises(tok_and_vokens):
    tok, vokens = tok_and_vokens
    with pytest.raises(ValueError, match="max_length"):
        encode_caption(tok, "a red circle", vokens, max_length=10)  # bos + 8 vokens + eos = 10
    encode_caption(tok, "a red circle", vokens, max_length=11)  # one caption token fits


def test_pad_examples_right_pads():
    a = Example([1, 5, 6, 7], [IGNORE_INDEX, 5, 6, 7])
    b = Example([1, 8], [IGNORE_INDEX, 8])
    batch = pad_examples([a, b], pad_id=3)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for v in batch.values():
        assert v.dtype == torch.long and v.shape == (2, 4)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX, 8, IGNORE_INDEX, IGNORE_INDEX]]


def test_tokenize_for_text_encoder_pads_and_truncates():
    tok = build_tiny_tokenizer()
    ids = tokenize_for_text_encoder(tok, ["a red circle", " ".join(["blue"] * 100)], max_length=16)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    n = len(tok("a red circle").input_ids)
    assert ids[0, n:].eq(tok.pad_token_id).all()
    assert not ids[1].eq(tok.pad_token_id).any()
