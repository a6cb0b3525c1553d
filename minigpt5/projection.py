"""The input projection (Q-Former or CLIP tokens -> LLM embeddings), optionally from MiniGPT-4.

The official code starts this projection from MiniGPT-4's pretrained checkpoint
(``config/prerained_minigpt4_7b.pth`` in their repository, set in ``config/minigpt4.yaml``
line 10 and loaded in ``minigpt4/models/mini_gpt4.py`` lines 266-270) and keeps it frozen
in both stages (``minigpt4/models/mini_gpt5.py`` lines 141-142). MiniGPT-4 saves only its
trainable tensors under ``"model"`` (``minigpt4/runners/runner_base.py`` lines 579-594):
``llama_proj.weight`` (LLM width x Q-Former width) and ``llama_proj.bias``.
"""

from __future__ import annotations

import os
import pickle
from typing import Optional

import torch
from torch import nn

from minigpt5.loading import WeightsNotFoundError

MINIGPT4_KEYS = ("llama_proj.weight", "llama_proj.bias")


class ProjectionCheckpointError(ValueError):
    """A projection checkpoint was read but does not hold a projection that fits."""


def read_minigpt4_projection(path: str) -> dict[str, torch.Tensor]:
    """``llama_proj.weight`` and ``llama_proj.bias`` of a MiniGPT-4 checkpoint, renamed ``weight`` and ``bias``.

    Reads the state dict under ``"model"`` (MiniGPT-4's layout) or a bare state dict.
    """
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"vision.projection_path '{path}' does not exist. It is MiniGPT-4's pretrained checkpoint "
            "(the official MiniGPT-5 repository ships it as config/prerained_minigpt4_7b.pth; MiniGPT-4's "
            "README links it as pretrained_minigpt4_7b.pth): put it there, or set vision.projection_path=null "
            "and vision.train_projection=true for a randomly initialised, trained projection."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ProjectionCheckpointError(
            f"vision.projection_path '{path}' is not a readable PyTorch checkpoint of tensors (torch.load, "
            f"weights_only=True): "
            f"{err.__class__.__name__}: {str(err).splitlines()[0]}"
        ) from err
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), torch.Tensor) for k in MINIGPT4_KEYS):
        found = sorted(state)[:8] if isinstance(state, dict) else type(checkpoint).__name__
        raise ProjectionCheckpointError(
            f"vision.projection_path '{path}' has no {' and '.join(MINIGPT4_KEYS)} tensors (under 'model' or at "
            f"the top level); found {found}"
        )
    return {"weight": state["llama_proj.weight"], "bias": state["llama_proj.bias"]}


def load_minigpt4_projection(projection: nn.Linear, path: str) -> None:
    """Copy MiniGPT-4's ``llama_proj`` from ``path`` into ``projection``, after checking the shapes."""
    tensors = read_minigpt4_projection(path)
    for name, tensor in tensors.items():
        own = getattr(projection, name)
        if tensor.shape != own.shape:
            raise ProjectionCheckpointError(
                f"llama_proj.{name} in vision.projection_path '{path}' has shape {tuple(tensor.shape)}, but this "
                f"model's input projection needs {tuple(own.shape)} (vision tower width {projection.in_features} "
                f"-> LLM width {projection.out_features}); MiniGPT-4's 7B projection maps the 768-wide Q-Former "
                "into Vicuna-7B's 4096"
            )
    with torch.no_grad():
        projection.weight.copy_(tensors["weight"])
        projection.bias.copy_(tensors["bias"])


def save_minigpt4_projection(projection: nn.Linear, path: str) -> None:
    """Write ``projection`` as MiniGPT-4 saves its trainable tensors, readable as ``vision.projection_path``."""
    state = {f"llama_proj.{name}": tensor.detach().cpu().clone() for name, tensor in projection.state_dict().items()}
    torch.save({"model": state}, path)


def build_input_projection(width: int, hidden: int, path: Optional[str]) -> nn.Linear:
    """The projection from ``width``-wide image tokens to the LLM's ``hidden`` width, from MiniGPT-4
    at ``path`` when given; built on the meta device (no weights to read) it is left as is."""
    projection = nn.Linear(width, hidden)
    if path is not None and not projection.weight.is_meta:
        load_minigpt4_projection(projection, path)
    return projection
