"""Fingerprints of the frozen parts, so a checkpoint is never paired with other frozen weights.

A checkpoint holds only the trainable weights; the frozen LLM, SD parts and vision tower
come back from the paths in its config. If the files at a path change after training (a
stand-in retrained, a folder overwritten with another model), the trainable weights meet
frozen weights they were never trained with, and the model silently draws noise. A
fingerprint is a few values sampled from every tensor of a part, at evenly spaced
positions, taken once when the part is built; it is saved with each checkpoint and
compared when one is loaded.

The comparison allows for the rounding of a change of dtype (a part saved in float32 and
loaded in bfloat16 still matches) but not for retrained or different weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from minigpt5.config import MiniGPT5Config

CHECKPOINT_KEY = "frozen_fingerprint"  # where a training checkpoint keeps them
SAMPLES_PER_TENSOR = 4
# bfloat16 keeps 8 bits of mantissa: a relative rounding of at most 2^-8, about 0.4%
RELATIVE_TOLERANCE = 1e-2


class FrozenPartsChanged(ValueError):
    """A checkpoint was trained against other frozen weights than the ones loaded now."""


def is_quantized(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds quantized weights (an integer dtype, or a quantization library's
    tensor subclass): its values are not the full-precision ones a fingerprint compares."""
    return type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.dtype in (torch.int8, torch.uint8)


def fingerprint(module: nn.Module) -> Optional[torch.Tensor]:
    """Float32 values sampled from every parameter and buffer of ``module`` (in name order);
    None where any tensor has no values (meta device, or partitioned across ranks)."""
    samples = []
    for _, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0]):
        if tensor.is_meta or tensor.numel() == 0 or is_quantized(tensor):
            return None
        flat = tensor.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(SAMPLES_PER_TENSOR, flat.numel())).long()
        samples.append(flat[index.to(flat.device)].float().cpu())
    return torch.cat(samples) if samples else torch.zeros(0)


def part_paths(cfg: "MiniGPT5Config") -> dict[str, Optional[str]]:
    """Where each fingerprinted part is loaded from (None: built tiny from the seed), for error messages."""
    return {"llm": cfg.llm.path, "text_encoder": cfg.diffusion.path, "unet": cfg.diffusion.path,
            "latents": cfg.diffusion.path, "vision": cfg.vision.path, "input_projection": cfg.vision.projection_path}


def fingerprints(parts: dict[str, Optional[nn.Module]]) -> dict[str, torch.Tensor]:
    """Fingerprints of the named parts that exist and have values."""
    found = {name: fingerprint(part) for name, part in parts.items() if part is not None}
    return {name: value for name, value in found.items() if value is not None}


def mismatched_parts(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parts present in both whose fingerprints differ beyond dtype rounding."""
    changed = []
    for name in sorted(saved.keys() & current.keys()):
        a, b = saved[name].float(), current[name].float()
        if a.shape != b.shape:
            changed.append(name)
            continue
        tiny = 1e-4 * float(a.abs().max()) if a.numel() else 0.0  # values that round to zero
        if not torch.allclose(a, b, rtol=RELATIVE_TOLERANCE, atol=tiny):
            changed.append(name)
    return changed


def check_frozen_parts(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor], where: str,
                       paths: dict[str, Optional[str]]) -> None:
    """Raise :class:`FrozenPartsChanged` naming each part whose frozen weights changed since ``where``
    (a description of the checkpoint) was saved; ``paths``: where each part was loaded from."""
    changed = mismatched_parts(saved, current)
    if changed:
        named = ", ".join(f"{name} (from {paths.get(name) or 'the tiny random build'})" for name in changed)
        raise FrozenPartsChanged(
            f"{where} was trained against other frozen weights than the ones loaded now: {named}. "
            "The files at those paths changed after the checkpoint was written (a stand-in retrained, a folder "
            "replaced); its trainable weights do not fit them. Point the config at the weights it was trained "
            "with, or train again against the current ones."
        )
