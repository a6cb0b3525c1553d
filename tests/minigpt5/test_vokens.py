"""Generative vokens: tokenizer ids, row initialisation, and that only voken rows train."""

from __future__ import annotations

import re

import pytest
import torch

from minigpt5.config import ConfigError, MiniGPT5Config, PeftSettings, VokenConfig
from minigpt5.model import MiniGPT5
from minigpt5.tokenizer import build_tiny_tokenizer
from minigpt5.vokens import VokenRows, add_voken_tokens

VOKENS = [f"[IMG{i}]" for i in range(8)]


# ---- tokenizer ----

def test_vokens_added_right_after_embedding_rows():
    tok = build_tiny_tokenizer()
    rows = len(tok)
    ids = add_voken_tokens(tok, VokenConfig(), rows)
    assert ids == list(range(rows, rows + 8))
    assert tok.convert_tokens_to_ids(VOKENS) == ids
    assert len(tok) == rows + 8
    # Each voken is one token, even inside text.
    encoded = tok("a red circle [IMG0][IMG1] [IMG7]", add_special_tokens=False).input_ids
    assert ids[0] in encoded and ids[1] in encoded and ids[7] in encoded
    assert tok.decode([ids[3]]) == "[IMG3]"


def test_vokens_after_padded_vocabulary_get_fillers():
    tok = build_tiny_tokenizer()
    n_tok = len(tok)
    rows = n_tok + 13  # the LLM table is padded beyond the tokenizer
    ids = add_voken_tokens(tok, VokenConfig(), rows)
    assert ids == list(range(rows, rows + 8))
    assert len(tok) == rows + 8
    vocab = tok.get_vocab()
    filler_ids = sorted(i for t, i in vocab.items() if t.startswith("<|unused_"))
    assert filler_ids == list(range(n_tok, rows))


def test_add_voken_tokens_is_idempotent_and_checks_ids():
    tok = build_tiny_tokenizer()
    rows = len(tok)
    first = add_voken_tokens(tok, VokenConfig(), rows)
    assert add_voken_tokens(tok, VokenConfig(), rows) == first
    assert len(tok) == rows + 8
    with pytest.raises(ConfigError):
        add_voken_tokens(tok, VokenConfig(), rows + 4)  # already there, at other ids


def test_tokenizer_larger_than_embedding_table_raises():
    tok = build_tiny_tokenizer()
    with pytest.raises(ConfigError, match="embedding table"):
        add_voken_tokens(tok, VokenConfig(), len(tok) - 1)


def test_custom_voken_count_and_format():
    tok = build_tiny_tokenizer()
    cfg = VokenConfig(num_vokens=3, token_format="<img_{}>")
    ids = add_voken_tokens(tok, cfg, len(tok))
    assert tok.convert_tokens_to_ids(["<img_0>", "<img_1>", "<img_2>"]) == ids


# ---- VokenRows ----

def test_voken_rows_mean_initialised_and_joined_at_lookup():
    g = torch.Generator().manual_seed(0)
    V, D, n = 20, 6, 3
    embedding = torch.nn.Embedding(V, D)
    lm_head = torch.randn(V, D, generator=g)
    rows = VokenRows.mean_initialised(V, n, embedding.weight, lm_head)
    for i in range(n):
        torch.testing.assert_close(rows.input_rows[i], embedding.weight.mean(0))
        torch.testing.assert_close(rows.output_rows[i], lm_head.mean(0))
    # Rows are independent copies, not views of one expanded tensor.
    with torch.no_grad():
        rows.input_rows[0] += 1.0
    assert not torch.equal(rows.input_rows[0], rows.input_rows[1])

    ids = torch.tensor([[0, 5, V, V + 2, 19], [V + 1, 3, 3, 0, V]])
    out = rows.embed(ids, embedding)  # (2, 5, D)
    for b in range(2):
        for t in range(5):
            i = int(ids[b, t])
            expected = rows.input_rows[i - V] if i >= V else embedding.weight[i]
            torch.testing.assert_close(out[b, t], expected)

    hidden = torch.randn(2, 5, D, generator=g)
    base_logits = hidden @ lm_head.t()  # (2, 5, V)
    logits = rows.extend_logits(hidden, base_logits)
    assert logits.shape == (2, 5, V + n)
    torch.testing.assert_close(logits[..., :V], base_logits)
    torch.testing.assert_close(logits[..., V:], hidden @ rows.output_rows.t())


def test_model_voken_rows_start_at_mean_of_llm_rows(tiny_model):
    emb = tiny_model.llm.get_input_embeddings().weight
    head = tiny_model.llm.get_output_embeddings().weight
    assert tiny_model.voken_ids[0] == emb.shape[0] == head.shape[0]
    assert tiny_model.vokens.input_rows.shape == (8, emb.shape[1])
    for i in range(8):
        torch.testing.assert_close(tiny_model.vokens.input_rows[i], emb.float().mean(0))
        torch.testing.assert_close(tiny_model.vokens.output_rows[i], head.float().mean(0))


# ---- what trains ----

def _build(method: str) -> MiniGPT5:
    torch.manual_seed(0)
    return MiniGPT5(MiniGPT5Config(peft=PeftSettings(method=method)))


def _expected_trainable(model: MiniGPT5, method: str) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    expected = {n for n in names if n.startswith(("vokens.", "mapper."))}
    if method == "lora":
        lora = {n for n in names if re.fullmatch(r"llm\..*\.(q_proj|v_proj)\.lora_[AB]\.default\.weight", n)}
        layers = model.cfg.llm.num_layers
        assert len(lora) == layers * 2 * 2  # q and v, A and B, in every layer
        assert not any("lora" in n for n in names - lora)  # LoRA on q_proj / v_proj only
        expected |= lora
    elif method == "prefix":
        prefix = {n for n in names if n.startswith("llm.prompt_encoder.")}
        assert prefix
        expected |= prefix
    return expected


@pytest.mark.parametrize("method", ["none", "lora", "prefix"])
def test_trainable_names_are_exactly_vokens_mapper_and_adapter(method):
    model = _build(method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model, method)
    assert "vokens.input_rows" in trainable and "vokens.output_rows" in trainable


@pytest.mark.parametrize("method", ["none", "lora", "prefix"])
def test_gradients_reach_exactly_the_trainable_parameters(method, caption_batch):
    model = _build(method)
    if method == "lora":
        # LoRA's B starts at zero, so A gets no gradient at init; move B off zero.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
    model.train()
    batch = caption_batch(model, ["a red circle", "a blue square on the left"], torch.Generator().manual_seed(0))
    out = model(batch, generator=torch.Generator().manual_seed(1))
    out.total(model.cfg.loss).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    # Every single voken row learns: input rows via the LLM, output rows via the text loss.
    assert (model.vokens.input_rows.grad.abs().sum(-1) > 0).all()
    assert (model.vokens.output_rows.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("method", ["none", "lora"])
def test_adamw_with_weight_decay_changes_only_voken_rows(method, caption_batch):
    """The frozen embedding and LM head stay bit-identical under AdamW with weight decay."""
    model = _build(method)
    emb = model.llm.get_input_embeddings().weight
    head = model.llm.get_output_embeddings().weight
    emb_before, head_before = emb.detach().clone(), head.detach().clone()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    vokens_before = {n: p.detach().clone() for n, p in model.vokens.named_parameters()}

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    batch = caption_batch(model, ["a red circle", "a green star at the top"], torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(batch, generator=generator).total(model.cfg.loss)
        loss.backward()
        optimizer.step()

    assert torch.equal(emb, emb_before)
    assert torch.equal(head, head_before)
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
    for name, p in model.vokens.named_parameters():
        changed_rows = (p.detach() != vokens_before[name]).any(dim=-1)
        assert changed_rows.all(), name
