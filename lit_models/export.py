"""Reading the trainable weights of any training checkpoint, and writing them as one file
(``minigpt5 export``, whose command line is :mod:`lit_models.export_cli`).

Reads a Lightning checkpoint file (DDP / single device: already trainable-only) or a
DeepSpeed checkpoint directory (Lightning's ``last.ckpt/`` or a raw
``engine.save_checkpoint`` folder: ``latest`` names the tag, ``<tag>/`` holds
``mp_rank_00_model_states.pt`` and, under ZeRO 1-3, ``*zero_pp_rank_*_optim_states.pt``).

Under ZeRO the fp32 master weights are sharded across the optimizer files;
:func:`deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint` gathers
them, and only the parameters the optimizer held (the trainable ones) are kept.
Under ZeRO stage 0 the weights are the module's own copy in the model-states file, which
holds only the trainable ones when saved with ``exclude_frozen_parameters`` (the
strategy overlays set it; with it unset the file holds frozen weights too, and they
are exported as is).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file, save_file

from lit_models.checkpoint_files import load_checkpoint_file
from minigpt5.fingerprint import CHECKPOINT_KEY

log = logging.getLogger(__name__)
MODEL_STATES = "mp_rank_00_model_states.pt"


def deepspeed_tag_dir(path: Path) -> Path:
    """The folder of the checkpoint's tag (named by ``latest``) holding the model-states file."""
    latest = path / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"'{path}' is a folder without a 'latest' file: not a DeepSpeed checkpoint")
    tag_dir = path / latest.read_text().strip()
    if not (tag_dir / MODEL_STATES).is_file():
        raise FileNotFoundError(f"DeepSpeed checkpoint '{path}' has no {MODEL_STATES} in '{tag_dir}'")
    return tag_dir


def deepspeed_trainable_weights(path: Path) -> dict[str, torch.Tensor]:
    """fp32 trainable weights of a DeepSpeed checkpoint folder (ZeRO 0-3), keyed as the module's state_dict."""
    tag_dir = deepspeed_tag_dir(path)
    states = load_checkpoint_file(tag_dir / MODEL_STATES)
    buffers = set(states.get("buffer_names") or ())
    if list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag_dir.name, exclude_frozen_parameters=True)
    else:
        weights = {k: v.float() for k, v in states["module"].items()}
    return {k: v for k, v in weights.items() if k not in buffers}


def trainable_weights(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Trainable weights of a Lightning checkpoint file, a DeepSpeed checkpoint folder or an
    exported ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir():
        return deepspeed_trainable_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise KeyError(f"'{path}' has no 'state_dict': not a Lightning checkpoint")
    return checkpoint["state_dict"]


def saved_fingerprint(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The frozen parts' fingerprints a checkpoint was saved with (:mod:`minigpt5.fingerprint`);
    empty for an exported ``.safetensors`` file or a checkpoint older than fingerprints."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return {}
    file = deepspeed_tag_dir(path) / MODEL_STATES if path.is_dir() else path
    return load_checkpoint_file(file, mmap=True).get(CHECKPOINT_KEY, {})


def export_trainable(ckpt: Union[str, Path], out: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Write the trainable weights of ``ckpt`` to the safetensors file ``out``; return them."""
    weights = {k: v.detach().contiguous() for k, v in trainable_weights(ckpt).items()}
    if not weights:
        raise ValueError(f"checkpoint '{ckpt}' holds no weights")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out))
    log.info("wrote %d trainable tensors (%s values) from %s to %s",
             len(weights), f"{sum(v.numel() for v in weights.values()):,}", ckpt, out)
    return weights
