"""PEFT adapters on the frozen LLM: LoRA or prefix tuning, or none."""

from __future__ import annotations

from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model
from transformers import PreTrainedModel

from minigpt5.config import ConfigError, PeftSettings


def apply_adapter(llm: PreTrainedModel, cfg: PeftSettings) -> tuple[PreTrainedModel, set[str]]:
    """Wrap ``llm`` with the configured adapter; return it and the adapter parameter names."""
    if cfg.method == "none":
        return llm, set()
    if cfg.method == "lora":
        peft_config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
        )
    elif cfg.method == "prefix":
        peft_config = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.prefix_hidden_size,
        )
    else:
        raise ConfigError(f"peft.method must be none, lora or prefix, got {cfg.method!r}")
    wrapped = get_peft_model(llm, peft_config)
    # PEFT leaves exactly the adapter's own parameters trainable.
    names = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    return wrapped, names
