"""PEFT adapters on the frozen LLM: LoRA or prefix tuning, or none; and what an adapter
changes about calling the LLM (:meth:`minigpt5.model.MiniGPT5.llm_step` reads it)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Union

from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from minigpt5.config import ConfigError, PeftSettings
from minigpt5.families import default_lora_targets

ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer of the model but its output layer


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
            target_modules=lora_targets(llm, cfg.lora_target_modules),
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


def lora_targets(llm: PreTrainedModel, names: Optional[tuple[str, ...]]) -> Union[list[str], str]:
    """PEFT's ``target_modules`` for ``peft.lora_target_modules`` on ``llm``: the family's query and
    value projections for None, PEFT's ``all-linear`` shorthand (every linear layer but the LM head),
    or the names, each checked to end the name of a module of ``llm``."""
    if names is None:
        names = default_lora_targets(llm.config)
    if ALL_LINEAR in names:
        if len(names) > 1:
            raise ConfigError(f"peft.lora_target_modules {list(names)}: {ALL_LINEAR} stands alone")
        return ALL_LINEAR
    modules = [name for name, _ in llm.named_modules()]
    missing = [n for n in names if not any(m == n or m.endswith("." + n) for m in modules)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"peft.lora_target_modules {list(names)}: this {llm.config.model_type} LLM has no module {missing}; "
            f"its linear layers are {linear}. null means the family's query and value projections, "
            f"[{ALL_LINEAR}] every linear layer"
        )
    return list(names)


def base_model(llm: nn.Module) -> nn.Module:
    """The LLM under its adapter (``llm`` itself without one)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def prefix_length(llm: nn.Module) -> int:
    """Virtual tokens a prompt-learning adapter (prefix tuning) puts in front; 0 otherwise."""
    peft_config = getattr(llm, "active_peft_config", None)
    if peft_config is None or not peft_config.is_prompt_learning:
        return 0
    return peft_config.num_virtual_tokens


def cache_argument(llm: nn.Module) -> str:
    """Name of the KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return _cache_argument_of(type(base_model(llm)))


@functools.cache
def _cache_argument_of(model_class: type) -> str:
    # Read once per class: generation asks at every token, and a signature costs ~0.15 ms.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def resolve_lora_targets(llm: nn.Module) -> Callable[[str, Any], Any]:
    """For :func:`minigpt5.config.model_differences`: ``peft.lora_target_modules`` as what it
    means on ``llm`` (null: the family's q and v, so null and ``[q_proj, v_proj]`` agree on a
    Llama); every other setting, and names ``llm`` lacks, as written."""
    llm = base_model(llm)

    def resolve(key: str, value: Any) -> Any:
        if key != "peft.lora_target_modules":
            return value
        try:
            return lora_targets(llm, tuple(value) if value is not None else None)
        except ConfigError:
            return value
    return resolve
