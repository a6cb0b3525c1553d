"""FSDP for MiniGPT-5: units found from the model, so any Hugging Face causal LM works.

``configs/strategy/fsdp.yaml`` names :class:`MiniGPT5FSDPStrategy`. Its auto-wrap policy
makes an FSDP unit of every LLM decoder layer (the classes the LLM lists in
``_no_split_modules``), every UNet down/mid/up block, the feature mapper, the VAE's
encoder and decoder, and the frozen SD text encoder and input-side vision tower, each
with nested units on its own ``_no_split_modules`` layers (a unit owns what its inner
units do not). What is left in the root unit is small: voken rows, input projection,
the LLM's embedding table, LM head and final norm, and the UNet's stem and head.

Only modules entered through ``__call__`` can be units (FSDP gathers a unit's shards in
its forward): that is why the VAE's encoder and decoder are units rather than the
``AutoencoderKL`` itself, whose ``encode`` method is called directly.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _Policy

from minigpt5.builders import VAELatents
from minigpt5.config import ConfigError
from minigpt5.layers import layer_classes, unet_block_classes
from minigpt5.model import MiniGPT5


def find_minigpt5(root: nn.Module) -> MiniGPT5:
    """The MiniGPT5 inside ``root`` (a LightningModule or the model itself)."""
    for module in root.modules():
        if isinstance(module, MiniGPT5):
            return module
    raise ValueError(f"no MiniGPT5 model inside {type(root).__name__}: nothing to shard")


def sharding_unit_classes(model: MiniGPT5) -> set[type[nn.Module]]:
    """Module classes that become FSDP units (see the module docstring)."""
    classes = layer_classes(model.llm) | unet_block_classes(model.unet) | {type(model.mapper)}
    towers = [model.text_encoder] + ([model.vision] if model.vision is not None else [])
    for tower in towers:
        classes |= {type(tower)} | layer_classes(tower)
    if isinstance(model.latents, VAELatents):
        classes |= {type(model.latents.vae.encoder), type(model.latents.vae.decoder)}
    return classes


def unit_parameters(root: nn.Module, classes: set[type[nn.Module]]) -> dict[nn.Module, list[nn.Parameter]]:
    """The parameters each FSDP unit owns: a unit owns what no unit inside it does;
    ``root`` is the root unit."""
    owned: dict[nn.Module, list[nn.Parameter]] = {root: []}
    classes = tuple(classes)

    def walk(module: nn.Module, unit: nn.Module) -> None:
        if isinstance(module, classes):
            unit = module
        owned.setdefault(unit, []).extend(module.parameters(recurse=False))
        for child in module.children():
            walk(child, unit)

    walk(root, root)
    return owned


def check_unit_dtypes(root: nn.Module) -> None:
    """Raise when a unit would mix dtypes, which FSDP (v1) cannot flatten into one tensor."""
    for unit, params in unit_parameters(root, sharding_unit_classes(find_minigpt5(root))).items():
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
        if len(dtypes) > 1:
            raise ConfigError(
                f"FSDP unit {type(unit).__name__} holds parameters of dtypes {', '.join(dtypes)}; FSDP needs one "
                "dtype per unit. Keep every part in float32 (model.config.{llm,diffusion,vision}.torch_dtype: "
                "float32, as configs/strategy/fsdp.yaml sets; put that file after the model overlay)."
            )


class MiniGPT5WrapPolicy(_Policy):
    """``ModuleWrapPolicy`` over :func:`sharding_unit_classes` of the model being wrapped.

    The classes are read when FSDP wraps the module, so one YAML works for any LLM.
    """

    def _run_policy(
        self, root_module: nn.Module, ignored_modules: set[nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[nn.Module, dict[str, Any]]:
        classes = sharding_unit_classes(find_minigpt5(root_module))
        return ModuleWrapPolicy(classes)._run_policy(root_module, ignored_modules, root_kwargs)


class MiniGPT5FSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with MiniGPT-5's wrap policy and ``use_orig_params=True``.

    ``use_orig_params`` lets frozen and trainable parameters share a unit (LoRA inside a
    frozen decoder layer; voken rows beside the frozen embedding in the root), keeps
    ``requires_grad`` per parameter, so the optimizer is built from the trainable
    parameters only, as under DDP. FSDP (v1) flattens each unit into one tensor, which
    must have a single dtype: run it with every part in float32 (``fsdp.yaml`` does) and
    let the bf16 mixed-precision policy cast for compute.
    """

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "full",
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            auto_wrap_policy=MiniGPT5WrapPolicy(),
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            use_orig_params=True,
            **kwargs,
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        check_unit_dtypes(model)  # before FSDP's own, less specific error
        return super()._setup_model(model)
