"""How a trained model is loaded for generation: precision, a quantized LLM, offloading.

At paper size (Vicuna-7B, SD 2.1, BLIP-2) a bf16 model needs about 18 GB resident; an
8-bit or 4-bit LLM and the SD parts and vision tower offloaded to the CPU between uses bring
generation under a 24 GB card with room to spare (``minigpt5 plan --inference`` prints
the figures). Quantization goes through transformers' quantization configs: bitsandbytes
on CUDA, torchao (the ``quant`` extra) on the CPU, so the same path runs in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Optional

import torch

from minigpt5.config import _DTYPES, ConfigError, MiniGPT5Config

QUANTIZATIONS = ("8bit", "4bit")
TORCHAO_GROUP_SIZE = 32  # 4-bit on the CPU: one scale per 32 weights of a row


@dataclass
class InferenceOptions:
    """Loading choices for generation; none of them changes what the trained weights mean."""

    device: str = "cpu"  # where the model runs
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None  # frozen parts' dtype; None: as trained
    quantize: Optional[Literal["8bit", "4bit"]] = None  # the LLM's linear layers (lm_head and embeddings stay)
    offload: bool = False  # SD parts and vision tower on the CPU between uses (minigpt5.offload)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)} or None, got {self.dtype!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} or None, got {self.quantize!r}")

    @property
    def is_default(self) -> bool:
        return self.dtype is None and self.quantize is None and not self.offload

    def apply_dtype(self, cfg: MiniGPT5Config) -> MiniGPT5Config:
        """``cfg`` with the frozen parts (LLM, SD, vision tower) in :attr:`dtype`, where set."""
        if self.dtype is None:
            return cfg
        return replace(cfg, llm=replace(cfg.llm, torch_dtype=self.dtype),
                       diffusion=replace(cfg.diffusion, torch_dtype=self.dtype),
                       vision=replace(cfg.vision, torch_dtype=self.dtype))


def quantization_config(quantize: str, device: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """transformers' quantization config for the LLM: bitsandbytes on CUDA (LLM.int8, or NF4 with
    double quantization), torchao on the CPU (int8 weights per channel, or int4 weights in groups
    of :data:`TORCHAO_GROUP_SIZE`); both keep ``lm_head`` in full precision."""
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if torch.device(device).type == "cuda":
        try:
            import bitsandbytes  # noqa: F401  (transformers needs it to load under the config below)
        except ImportError as err:
            raise ConfigError(f"--quantize {quantize} on CUDA needs bitsandbytes: pip install bitsandbytes") from err
        from transformers import BitsAndBytesConfig

        if quantize == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup
    except ImportError as err:
        raise ConfigError(
            f"--quantize {quantize} on the CPU needs torchao: pip install -e '.[quant]'"
        ) from err
    from transformers import TorchAoConfig

    if quantize == "8bit":
        return TorchAoConfig(Int8WeightOnlyConfig())
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(TORCHAO_GROUP_SIZE)))
