"""Paper-size models with random weights, built on a device and saved where ``fit`` loads them.

Nothing is downloaded: :func:`random_model` builds ``MiniGPT5`` from the architecture
configs ``minigpt5 plan`` reads (``build_components(empty=True)``: the shipped
``minigpt5/architectures`` for the paper's hub ids, the tiny tokenizer), but on a real
device, so every module draws its own random initialisation there instead of staying on
the meta device. :func:`save_frozen_parts` writes the LLM and the SD parts in the Hugging
Face and diffusers layouts, and :func:`random_projection_file` a MiniGPT-4-layout input
projection, so that ``minigpt5 fit`` loads these very weights through its usual paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lit_models.plan import read_settings
from minigpt5.builders import VAELatents, build_components
from minigpt5.config import MiniGPT5Config
from minigpt5.model import MiniGPT5
from minigpt5.projection import save_minigpt4_projection
from minigpt5.tokenizer import build_tiny_tokenizer


def random_model(cfg: MiniGPT5Config, device: str) -> MiniGPT5:
    """``cfg``'s model with random weights, every tensor created on ``device`` (no file read
    but a projection file the config names)."""
    with torch.device(device):
        return MiniGPT5(cfg, build_components(cfg, empty=True))


def save_frozen_parts(model: MiniGPT5, directory: Path) -> list[str]:
    """Write ``model``'s LLM and SD parts under ``directory``; return the ``fit`` flags that load them.

    The tokenizers are the tiny one, as the empty build has them: loaded from these folders,
    the vokens land on the same ids (right after the LLM's embedding rows).
    """
    llm, sd = directory / "llm", directory / "sd"
    model.llm.save_pretrained(llm)
    build_tiny_tokenizer().save_pretrained(llm)
    parts = {"text_encoder": model.text_encoder, "unet": model.unet, "scheduler": model.scheduler,
             "tokenizer": build_tiny_tokenizer()}
    if isinstance(model.latents, VAELatents):
        parts["vae"] = model.latents.vae
    for name, part in parts.items():
        part.save_pretrained(sd / name)
    return [f"--model.config.llm.path={llm}", f"--model.config.diffusion.path={sd}"]


def random_projection_file(args: list[str], path: Path) -> list[str]:
    """A random input projection of the right shape for the run of ``args`` (``fit``'s ``-c``
    files and flags), saved as MiniGPT-4 saves it; return the flag that reads it.

    The paper's stage 2 freezes MiniGPT-4's projection, loaded from a file that cannot be
    downloaded here; a random one in its place keeps what trains and what is frozen unchanged.
    """
    trained = read_settings([*args, "--model.config.vision.projection_path=null",
                             "--model.config.vision.train_projection=true"]).model
    out_features, in_features = MiniGPT5.on_meta(trained).input_projection.weight.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    save_minigpt4_projection(nn.Linear(in_features, out_features), str(path))
    return [f"--model.config.vision.projection_path={path}"]
