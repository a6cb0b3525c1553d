"""The repeated blocks of the LLM and the UNet, and activation checkpointing on them.

The same blocks are the units of activation checkpointing here and of FSDP's
auto-wrap policy (``lit_models/strategies.py``), found from the model itself so any
Hugging Face causal LM works: its decoder layers are the classes it lists in
``_no_split_modules``; the UNet's are the classes of its down, mid and up blocks.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Iterable

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

_CHECKPOINTED = "_minigpt5_checkpointed"


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """Classes of the layers of a Hugging Face model (PEFT-wrapped or not): those its
    ``PreTrainedModel`` declares in ``_no_split_modules`` that occur in it, e.g. an LLM's
    decoder layers. Raises when there are none, since nothing could then be wrapped or
    checkpointed.
    """
    names = {
        name
        for module in model.modules()
        if isinstance(module, PreTrainedModel)
        for name in (getattr(module, "_no_split_modules", None) or ())
    }
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"{type(model).__name__} declares no layer classes in _no_split_modules "
            f"(found names {sorted(names)}); its layers cannot be checkpointed or FSDP-wrapped"
        )
    return classes


def unet_block_classes(unet: nn.Module) -> set[type[nn.Module]]:
    """Classes of the UNet's down, mid and up blocks (an SD3 transformer's: its transformer blocks)."""
    if not isinstance(unet, UNet2DConditionModel):
        return {type(b) for b in unet.transformer_blocks}
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return {type(b) for b in blocks if b is not None}


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's ``forward``, recomputed in the backward instead of keeping its activations.

    Non-reentrant checkpointing: gradients reach the inputs and the parameters whether or not
    the inputs require grad, and the RNG state is replayed so dropout draws the same mask.
    Without grad (sampling) it runs as is.
    """
    forward = functools.partial(type(self).forward, self)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_layers(root: nn.Module, classes: Iterable[type[nn.Module]]) -> int:
    """Checkpoint every submodule of ``root`` whose class is in ``classes``; return how many.

    The instance's ``forward`` is replaced, so module hooks (FSDP's included) stay outside the
    recomputation, parameter names do not change, and frozen modules may stay in eval mode
    (Hugging Face's own ``gradient_checkpointing_enable`` only acts in training mode, so it
    would silently do nothing on the frozen LLM). Applying it twice changes nothing.
    """
    classes = tuple(classes)
    count = 0
    for module in root.modules():
        if isinstance(module, classes) and not getattr(module, _CHECKPOINTED, False):
            # Bound with MethodType so deepcopy and pickle rebind it to the copy.
            module.forward = types.MethodType(_checkpointed_forward, module)
            setattr(module, _CHECKPOINTED, True)
            count += 1
    return count
