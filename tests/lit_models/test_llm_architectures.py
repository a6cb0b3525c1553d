"""One real model per LLM family, built on the meta device from its shipped architecture
(minigpt5/architectures/README.md) as its config overlay (configs/model/) sets it: the LLM's
parameter count against the published figure and an independent formula, what trains in
stages 1 and 2, and `minigpt5 plan`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from transformers import PretrainedConfig

from lit_models.plan import make_plan, read_settings
from minigpt5.builders import llm_config
from minigpt5.families import FAMILIES
from minigpt5.model import MiniGPT5

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["configs/uas.yaml", "configs/model/paper.yaml"]
STAGE2 = ["configs/uas.yaml", "configs/mls.yaml", "configs/mls_vist.yaml", "configs/model/paper.yaml"]


@dataclass(frozen=True)
class Published:
    """A real model of a family and its published parameter count."""

    overlay: Optional[str]  # its configs/model file; None: the hub id is given as a flag
    hub: str
    total: int  # published parameter count: exact, or rounded (then the build must be within 1%)
    exact: bool
    source: str
    non_embedding: Optional[int] = None  # published exactly, where it is


PUBLISHED = {
    "llama": Published("llama-3.1-8b.yaml", "meta-llama/Llama-3.1-8B-Instruct", 8_000_000_000, False,
                       "Llama 3.1 model card: 8B"),
    "qwen2": Published("qwen2.5-7b.yaml", "Qwen/Qwen2.5-7B-Instruct", 7_610_000_000, False,
                       "Qwen2.5-7B-Instruct model card: 7.61B (6.53B non-embedding)"),
    "mistral": Published("mistral-7b.yaml", "mistralai/Mistral-7B-Instruct-v0.3", 7_300_000_000, False,
                         "Mistral AI's Mistral 7B announcement: 7.3B (v0.3 adds 768 vocabulary rows)"),
    "gemma2": Published("gemma-2-9b.yaml", "google/gemma-2-9b-it", 917_504_000 + 8_324_201_984, True,
                        "Gemma 2 report, parameter counts: 917,504,000 embedding + 8,324,201,984 non-embedding",
                        8_324_201_984),
    "phi3": Published("phi-3-mini.yaml", "microsoft/Phi-3-mini-4k-instruct", 3_800_000_000, False,
                      "Phi-3 technical report and model card: 3.8B"),
    "gpt_neox": Published(None, "EleutherAI/pythia-6.9b", 6_857_302_016, True,
                          "Pythia model card, 'Naming convention and parameter count'", 6_444_163_072),
}
NOT_SHIPPED = {"gemma"}
SD21 = 865_910_724 + 340_387_840 + 83_653_863  # SD 2.1 base's UNet, text encoder, VAE (as tests/lit_models/test_plan.py)  # Gemma (1) is built tiny only; Gemma 2 is its shipped successor


def settings(family: str, files: list[str]):
    p = PUBLISHED[family]
    args = [a for f in files for a in ("-c", str(ROOT / f))]
    if p.overlay is not None:
        return read_settings([*args, "-c", str(ROOT / "configs/model" / p.overlay)])
    return read_settings([*args, f"--model.config.llm.path={p.hub}", "--model.config.vision.projection_path=null",
                          "--model.config.vision.train_projection=true"])


# ---- independent expectations, from the architectures' definitions ----

def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def attention_widths(c: PretrainedConfig) -> tuple[int, int]:
    """Output widths of the query projection and of each of key and value."""
    if c.model_type == "gpt_neox":
        return c.hidden_size, c.hidden_size
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_attention_heads * head, c.num_key_value_heads * head


def llm_parameters(c: PretrainedConfig) -> int:
    """Parameters of a causal LM of ``c``, counted from how its family is defined."""
    d, ff, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    if c.model_type == "gpt_neox":  # fused qkv, dense, 4x MLP, all with biases; two LayerNorms a layer
        layer = linear(d, 3 * d) + linear(d, d) + linear(d, ff) + linear(ff, d) + 2 * 2 * d
        return layers * layer + 2 * d + 2 * vocab * d  # + final LayerNorm, embedding, untied head
    q, kv = attention_widths(c)
    bias = q + 2 * kv if c.model_type == "qwen2" else 0  # Qwen2: biases on q, k and v only
    norms = (4 if c.model_type == "gemma2" else 2) * d  # Gemma 2 norms both sides of attention and MLP
    layer = d * (q + 2 * kv) + bias + q * d + 3 * d * ff + norms  # attention, gated MLP (gate, up, down)
    return layers * layer + d + (1 if c.tie_word_embeddings else 2) * vocab * d


def lora_parameters(c: PretrainedConfig, targets: tuple[str, ...], r: int = 8) -> int:
    d, (q, kv) = c.hidden_size, attention_widths(c)
    widths = {"q_proj": (d, q), "v_proj": (d, kv), "qkv_proj": (d, q + 2 * kv), "query_key_value": (d, q + 2 * kv)}
    return c.num_hidden_layers * sum(r * (fan_in + fan_out) for fan_in, fan_out in (widths[t] for t in targets))


def count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.fixture(scope="module")
def paper_trainable() -> int:
    return count(p for p in MiniGPT5.on_meta(read_settings(
        [a for f in STAGE1 for a in ("-c", str(ROOT / f))]).model).parameters() if p.requires_grad)


def test_every_family_ships_a_real_model_but_gemma_one():
    assert set(PUBLISHED) | NOT_SHIPPED == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_shipped_llm_matches_its_published_count(family, paper_trainable):
    p = PUBLISHED[family]
    model = MiniGPT5.on_meta(settings(family, STAGE1).model)
    config = model.llm.config
    assert config.model_type == family  # the family is read from the model's own config
    llm = count(model.llm.parameters())
    assert llm == llm_parameters(config)
    assert llm == p.total if p.exact else abs(llm - p.total) < 0.01 * p.total, (llm, p.source)
    if p.non_embedding is not None:
        embeddings = {id(m.weight): m.weight.numel()
                      for m in (model.llm.get_input_embeddings(), model.llm.get_output_embeddings())}
        assert llm - sum(embeddings.values()) == p.non_embedding, p.source
    # Stage 1 trains the voken rows and the mapper, whose input follows the LLM's width
    # (the paper's Vicuna is 4096 wide; the mapper's first layer is 1024 wide).
    d = config.hidden_size
    trainable = count(q for q in model.parameters() if q.requires_grad)
    assert trainable - paper_trainable == (2 * 8 + 1024) * (d - 4096)


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_stage2_lora_sits_on_the_family_query_and_value(family):
    model = MiniGPT5.on_meta(settings(family, STAGE2).model)
    lora = count(q for n, q in model.named_parameters() if "lora_" in n)
    assert lora == lora_parameters(model.llm.config, FAMILIES[family].lora_targets)
    assert all(q.requires_grad for n, q in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_plan_on_the_meta_device(family):
    s = settings(family, STAGE1)
    plan = make_plan(s)
    # Frozen: the LLM and SD 2.1 base's UNet, text encoder and VAE (their published counts).
    assert plan.sizes.frozen == llm_parameters(llm_config(s.model.llm, empty=True)) + SD21
    assert plan.activations_on.llm < plan.activations_off.llm / 4  # its decoder layers checkpointed
    assert plan.footprints()["fsdp"].frozen_weights == 4 * plan.sizes.frozen  # one GPU, fp32 under FSDP


# ---- an LLM overlay and a decoder overlay together ----

COMBINATIONS = [("qwen2", "sdxl"), ("llama", "sd3")]  # configs/model/qwen2.5-7b.yaml + sdxl.yaml, llama-3.1-8b + sd3


@pytest.mark.parametrize("family, decoder", COMBINATIONS)
def test_an_llm_overlay_and_a_decoder_overlay_compose(family, decoder):
    """``-c configs/model/<decoder>.yaml -c configs/model/<llm>.yaml``: the one's decoder with the other's LLM,
    each at its published size, and a mapper from the LLM's width to the decoder's rows and pooled embedding."""
    from test_plan import (
        SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2, SD3_TRANSFORMER, SD3_VAE, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2,
        SDXL_UNET, SDXL_VAE, mapper,
    )

    decoders = {"sdxl": (SDXL_UNET, SDXL_TEXT_ENCODER + SDXL_TEXT_ENCODER_2, SDXL_VAE, 2048, 1280),
                "sd3": (SD3_TRANSFORMER, SD3_TEXT_ENCODER + SD3_TEXT_ENCODER_2, SD3_VAE, 4096, 2048)}
    denoiser, encoders, vae, width, pooled = decoders[decoder]
    model = MiniGPT5.on_meta(settings(family, [*STAGE1, f"configs/model/{decoder}.yaml"]).model)
    config = model.llm.config
    assert config.model_type == family and count(model.llm.parameters()) == llm_parameters(config)
    assert (count(model.unet.parameters()), count(model.text_encoder.parameters()),
            count(model.latents.parameters())) == (denoiser, encoders, vae)
    assert (model.condition_width, model.pooled_width) == (width, pooled)
    hidden = config.hidden_size
    assert count(model.mapper.parameters()) == (sum(mapper(hidden=hidden).values())
                                                + linear(1024, width) + linear(width, pooled))
