"""LLM families: the tiny random build of each, its LoRA targets, and what no family may do.

A tiny LLM (``llm.path`` unset) is built from ``llm.family``'s transformers classes at the
tiny sizes; a loaded LLM's family is its own config's ``model_type``, and any Hugging Face
causal LM loads through ``AutoModelForCausalLM``. The families here are the tested ones
(docs/models.md); another one works when :func:`check_llm` accepts it and
``peft.lora_target_modules`` names its modules (or is ``[all-linear]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from minigpt5.config import ConfigError, LLMConfig

# Config attributes that rescale a family's logits after its LM head; the voken logits, computed
# from the voken rows outside that head, would not be rescaled with them.
_LOGIT_SCALES = ("logit_scale", "logits_scaling")


@dataclass(frozen=True)
class Family:
    """One transformers LLM family, as this project builds and adapts it."""

    name: str  # as its authors write it
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    lora_targets: tuple[str, ...]  # its attention's query and value projections: the paper's LoRA
    head_count_keys: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads")  # set to llm.num_heads
    head_width_keys: tuple[str, ...] = ("head_dim",)  # set to hidden_size / num_heads (Gemma's default is 256)


FAMILIES: dict[str, Family] = {  # keyed by model_type, as minigpt5.config.LLMFamily lists them
    "llama": Family("Llama", LlamaConfig, LlamaForCausalLM, ("q_proj", "v_proj")),
    "qwen2": Family("Qwen2", Qwen2Config, Qwen2ForCausalLM, ("q_proj", "v_proj")),
    "mistral": Family("Mistral", MistralConfig, MistralForCausalLM, ("q_proj", "v_proj")),
    "gemma": Family("Gemma", GemmaConfig, GemmaForCausalLM, ("q_proj", "v_proj")),
    # query_pre_attn_scalar: the attention's 1/sqrt scale, the head width in the published models
    "gemma2": Family("Gemma 2", Gemma2Config, Gemma2ForCausalLM, ("q_proj", "v_proj"),
                     head_width_keys=("head_dim", "query_pre_attn_scalar")),
    # q, k and v are one fused projection: LoRA on it adapts k as well
    "phi3": Family("Phi-3", Phi3Config, Phi3ForCausalLM, ("qkv_proj",)),
    "gpt_neox": Family("GPT-NeoX", GPTNeoXConfig, GPTNeoXForCausalLM, ("query_key_value",),
                       head_count_keys=("num_attention_heads",), head_width_keys=()),
}


def tiny_llm_config(cfg: LLMConfig, vocab_size: int) -> PretrainedConfig:
    """The config of ``cfg.family`` at ``cfg``'s tiny sizes: multi-head attention, untied head."""
    family = FAMILIES[cfg.family]
    heads = {key: cfg.num_heads for key in family.head_count_keys}
    widths = {key: cfg.hidden_size // cfg.num_heads for key in family.head_width_keys}
    return family.config_class(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        max_position_embeddings=max(cfg.max_length, 128),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        **heads,
        **widths,
    )


def tiny_llm(cfg: LLMConfig, vocab_size: int) -> PreTrainedModel:
    """A random tiny LLM of ``cfg.family`` in ``cfg.torch_dtype`` (from the global RNG:
    :func:`minigpt5.builders.build_components` seeds it)."""
    return FAMILIES[cfg.family].model_class(tiny_llm_config(cfg, vocab_size)).to(getattr(torch, cfg.torch_dtype))


def default_lora_targets(config: PretrainedConfig) -> tuple[str, ...]:
    """The query and value projections of the family of ``config`` (an LLM's config)."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ConfigError(
            f"peft.lora_target_modules is null, which means the family's q and v projections, but there is no "
            f"default for model type {config.model_type!r} (tested families: {', '.join(FAMILIES)}); set "
            "peft.lora_target_modules to its module names, or [all-linear]"
        )
    return family.lora_targets


def logit_softcap(config: PretrainedConfig) -> Optional[float]:
    """The cap ``c`` of a family that squashes its logits to ``c * tanh(logits / c)`` (Gemma 2), else None."""
    return getattr(config, "final_logit_softcapping", None)


def check_llm(llm: PreTrainedModel) -> None:
    """Raise a ConfigError naming the reason when the voken rows cannot join ``llm``'s embedding
    table and LM head: no separate input and output embeddings, an LM head with a bias (the
    voken rows have none), or logits rescaled after the head."""
    kind = f"LLM {type(llm).__name__} (model type {llm.config.model_type!r})"
    head = llm.get_output_embeddings()
    if llm.get_input_embeddings() is None or head is None:
        raise ConfigError(f"{kind} has no input embedding table or no LM head; the voken rows join both")
    if getattr(head, "bias", None) is not None:
        raise ConfigError(f"{kind} has an LM head with a bias, which voken rows do not have; it is not supported")
    for key in _LOGIT_SCALES:
        if getattr(llm.config, key, None) not in (None, 1, 1.0):
            raise ConfigError(f"{kind} rescales its logits (config.{key} = {getattr(llm.config, key)}), "
                              "which the voken logits would miss; it is not supported")
