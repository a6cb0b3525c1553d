"""Every tested LLM family, built tiny from its transformers config class, passes the same checks:
voken rows, what trains, LoRA targets and prefix tuning, KV-cached generation, activation
checkpointing, the FSDP units and a short stage-1 fit. A family that cannot carry vokens is
refused, naming why."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from transformers import CohereConfig, CohereForCausalLM, PhiConfig, PhiForCausalLM

from data_modules.cc3m import CC3MDataModule
from lit_models.module import MiniGPT5Module
from lit_models.strategies import MiniGPT5WrapPolicy
from minigpt5.config import (
    LLM_FAMILIES,
    ConfigError,
    GuidanceConfig,
    LLMConfig,
    MiniGPT5Config,
    PeftSettings,
)
from minigpt5.families import FAMILIES, check_llm, default_lora_targets, tiny_llm
from minigpt5.generate import GenerationConfig, generate
from minigpt5.layers import layer_classes
from minigpt5.model import MiniGPT5

CAPTIONS = ["a red circle", "a blue square"]
LAYERS = 2


def config(family: str, **kwargs) -> MiniGPT5Config:
    llm = LLMConfig(family=family, hidden_size=32, intermediate_size=64, num_heads=4, num_layers=LAYERS,
                    **kwargs.pop("llm", {}))
    return MiniGPT5Config(llm=llm, guidance=GuidanceConfig(num_inference_steps=2), **kwargs)


def build(family: str, **kwargs) -> MiniGPT5:
    torch.manual_seed(0)  # the mapper is initialised from the global RNG
    return MiniGPT5(config(family, **kwargs))


def step(model: MiniGPT5, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One training forward and backward with fixed noise; the loss."""
    torch.manual_seed(1)
    loss = model(batch, generator=torch.Generator().manual_seed(2)).total(model.cfg.loss)
    loss.backward()
    return loss.detach()


def test_the_config_lists_the_families_built():
    assert tuple(FAMILIES) == LLM_FAMILIES


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_tiny_llm_of_the_configured_family_sizes_and_dtype(family):
    llm = tiny_llm(LLMConfig(family=family, hidden_size=32, num_heads=4, torch_dtype="bfloat16"), vocab_size=100)
    assert type(llm) is FAMILIES[family].model_class and llm.config.model_type == family
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16}
    assert llm.config.hidden_size == 32 and llm.config.num_attention_heads == 4


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_voken_rows_join_the_family_and_only_they_train(family, caption_batch):
    model = build(family)
    llm = model.llm
    assert llm.config.model_type == family and type(llm) is FAMILIES[family].model_class
    rows = llm.get_input_embeddings().weight.shape[0]
    assert model.voken_ids == list(range(rows, rows + 8)) and llm.get_output_embeddings().weight.shape[0] == rows
    names = {n for n, _ in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in names if n.startswith(("vokens.", "mapper."))}

    # A voken whose output row is a vocabulary row's gets that row's logit: the voken logits
    # see the same final norm (and Gemma 2's soft cap) as the family's own.
    batch = caption_batch(model, CAPTIONS, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        head = llm.get_output_embeddings().weight
        head[10:18] *= 100  # logits in the tens, where Gemma 2's cap of 30 bends them
        model.vokens.output_rows.copy_(head[10:18])
        logits, _ = model.llm_forward(batch["input_ids"], batch["attention_mask"])  # (B, T, V + 8)
    torch.testing.assert_close(logits[..., rows:], logits[..., 10:18])

    step(model, batch)
    assert model.vokens.input_rows.grad.abs().sum() > 0 and model.vokens.output_rows.grad.abs().sum() > 0
    assert all(p.grad is None for p in llm.parameters())


def adapted_modules(model: MiniGPT5) -> set[str]:
    """Names (last part) of the LLM modules carrying LoRA weights, which alone of the LLM train."""
    lora = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    assert lora and all(".lora_" in n for n in lora)
    return {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_lora_on_the_family_defaults_or_every_linear_layer_and_prefix_tuning(family, caption_batch):
    plain = build(family).llm
    model = build(family, peft=PeftSettings(method="lora"))
    assert adapted_modules(model) == set(FAMILIES[family].lora_targets)
    assert sum(".lora_B." in n for n, p in model.llm.named_parameters()) == LAYERS * len(FAMILIES[family].lora_targets)
    step(model, caption_batch(model, CAPTIONS))
    assert all(p.grad.abs().sum() > 0 for n, p in model.llm.named_parameters() if ".lora_B." in n)

    every = build(family, peft=PeftSettings(method="lora", lora_target_modules=["all-linear"]))
    linear = {n.rsplit(".", 1)[-1] for n, m in plain.named_modules() if isinstance(m, nn.Linear)}
    head = next(n for n, m in plain.named_modules() if m is plain.get_output_embeddings())
    assert adapted_modules(every) == linear - {head}  # PEFT's all-linear leaves the LM head out

    prefix = build(family, peft=PeftSettings(method="prefix", num_virtual_tokens=4))
    trainable = [p for n, p in prefix.llm.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_encoder.") for n, p in prefix.llm.named_parameters()
                             if p.requires_grad)
    step(prefix, caption_batch(prefix, CAPTIONS))
    assert all(p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("family", ["phi3", "gpt_neox"])
def test_lora_names_the_family_lacks_are_refused_naming_its_layers(family):
    with pytest.raises(ConfigError, match=rf"no module \['q_proj', 'v_proj'\].*{FAMILIES[family].lora_targets[0]}"):
        build(family, peft=PeftSettings(method="lora", lora_target_modules=["q_proj", "v_proj"]))


def force_image_at(model: MiniGPT5, call: int, monkeypatch) -> Callable[[], None]:
    """Make [IMG0] the only choice at LLM call ``call`` of each generation; returns a reset."""
    original, calls = model.vokens.extend_logits, {"n": 0}

    def extend_logits(hidden: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
        logits = original(hidden, base_logits)
        if calls["n"] == call:
            logits[..., -1, model.voken_ids[0]] += 1e4
        calls["n"] += 1
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", extend_logits)
    return lambda: calls.update(n=0)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["none", "prefix"])
@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_kv_cached_generation_equals_recomputing(family, method, monkeypatch):
    model = build(family, peft=PeftSettings(method=method, num_virtual_tokens=4)).eval()
    reset = force_image_at(model, 3, monkeypatch)
    runs = []
    for use_cache in (True, False):
        reset()
        runs.append(generate(model, "a blue square", None, GenerationConfig(
            temperature=0, max_new_tokens=14, min_new_tokens=14, use_cache=use_cache)))
    cached, recomputed = runs
    assert cached.token_ids == recomputed.token_ids
    assert cached.token_ids.index(model.voken_ids[0]) == 3  # the image was drawn, and the text went on after it
    torch.testing.assert_close(torch.stack(cached.voken_features), torch.stack(recomputed.voken_features),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_checkpointed_layers_give_the_same_step(family, caption_batch):
    plain = build(family)
    checkpointed = build(family, llm={"gradient_checkpointing": True})
    layers = [m for m in checkpointed.llm.modules() if type(m).__name__ in checkpointed.llm._no_split_modules]
    assert {type(m) for m in layers} == layer_classes(checkpointed.llm) and len(layers) == LAYERS
    assert all(getattr(m, "_minigpt5_checkpointed", False) for m in layers)
    batch = caption_batch(plain, CAPTIONS, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(step(checkpointed, batch), step(plain, batch), rtol=0, atol=0)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_fsdp_makes_a_unit_of_every_decoder_layer(family):
    model = build(family, peft=PeftSettings(method="lora"))
    units = set(MiniGPT5WrapPolicy()._run_policy(model, set(), {}))
    layers = [m for m in model.llm.modules() if type(m).__name__ in FAMILIES[family].model_class._no_split_modules]
    assert len(layers) == LAYERS and all(layer in units for layer in layers)
    # Outside the units the LLM keeps only its embedding table, LM head and final norm.
    in_units = {id(p) for unit in units for p in unit.parameters()}
    root = [p for p in model.llm.parameters() if id(p) not in in_units]
    ends = [model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight]
    assert {id(p) for p in ends} <= {id(p) for p in root}
    assert sum(p.numel() for p in root) - sum(p.numel() for p in ends) <= 2 * 32  # a final norm's weight (and bias)


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_a_short_stage1_fit_trains_the_vokens_and_mapper_only(family, shards, tmp_path):
    cfg = config(family)
    module = MiniGPT5Module(cfg)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = CC3MDataModule(shards.train, None, batch_size=4, num_workers=0, samples_per_epoch=8, model_config=cfg)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {n for n, p in module.named_parameters() if p.requires_grad}
    assert "model.vokens.input_rows" in changed and any(n.startswith("model.mapper.") for n in changed)


def test_families_that_cannot_carry_vokens_are_refused_naming_why():
    sizes = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with pytest.raises(ConfigError, match="LM head with a bias"):
        check_llm(PhiForCausalLM(PhiConfig(**sizes)))
    cohere = CohereForCausalLM(CohereConfig(**sizes, logit_scale=0.0625))
    with pytest.raises(ConfigError, match=r"rescales its logits \(config.logit_scale"):
        check_llm(cohere)
    with pytest.raises(ConfigError, match="no default for model type 'cohere'.*set peft.lora_target_modules"):
        default_lora_targets(cohere.config)
