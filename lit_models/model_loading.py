"""The one way the commands (``generate``, ``eval``, the chat) load a model for inference: a
model folder or hub id (``MiniGPT5.from_pretrained``) or a training checkpoint, under the
loading options (precision, quantized LLM, offloading) of :mod:`minigpt5.inference`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from minigpt5.inference import QUANTIZATIONS, InferenceOptions
from minigpt5.model import MiniGPT5
from minigpt5.pretrained import WEIGHTS_FILE, from_pretrained, resolve_folder, with_options


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--quantize`` and ``--offload``."""
    group = parser.add_argument_group("loading for inference (any model source)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="the frozen parts' dtype (default: as trained)")
    group.add_argument("--quantize", choices=QUANTIZATIONS,
                       help="the LLM in 8 or 4 bits (bitsandbytes on CUDA, torchao on the CPU: pip install -e '.[quant]')")
    group.add_argument("--offload", action="store_true",
                       help="keep SD's parts and the vision tower on the CPU between uses")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    return InferenceOptions(device=args.device, dtype=args.dtype, quantize=args.quantize, offload=args.offload)


def is_checkpoint(source: str) -> bool:
    """A training checkpoint (a file, or a DeepSpeed folder with ``latest``) rather than a model folder or hub id."""
    path = Path(source)
    return path.is_file() or (path.is_dir() and (path / "latest").is_file())


def load_model(source: str, options: Optional[InferenceOptions] = None, allow_pickle: bool = False) -> MiniGPT5:
    """The model of ``source`` (model folder, hub id or training checkpoint) ready for generation."""
    options = options or InferenceOptions()
    if not is_checkpoint(source):
        return from_pretrained(MiniGPT5, source, options)
    from lit_models.module import MiniGPT5Module

    return with_options(MiniGPT5Module.from_checkpoint(source, allow_pickle=allow_pickle).model, options)


def weights_file(source: str) -> Path:
    """The file that identifies ``source``'s trained weights (hashed into evaluation results)."""
    return Path(source) if is_checkpoint(source) else resolve_folder(source) / WEIGHTS_FILE
