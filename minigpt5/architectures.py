"""Architecture configs of the paper's models and of one real LLM per tested family, shipped so
their sizes are known offline (sources: ``architectures/README.md``).

Each folder under ``architectures/`` holds the published ``config.json`` values (no
weights) of one hub model, laid out as on the hub. They are only read when a model is
built *empty* (every tensor on the meta device, e.g. for ``minigpt5 plan`` and the
parameter-count tests); loading weights always goes to the configured path itself.

Two hold the sizes only, not the hub file: ``vicuna-7b-v0`` (Vicuna v0 7B is a fine-tuned
Llama-1 7B; its sizes, other fields at transformers' defaults) and ``blip2-flan-t5-xxl``
(BLIP-2's default ViT-g and Q-Former configs, which is what its conversion script uses; the
T5 text config is left out, as the vision tower keeps only the ViT, Q-Former and queries).

``stable-diffusion-xl-base-1.0`` holds the values of the hub repository's own files
(``model_index.json``, ``unet``, ``text_encoder``, ``text_encoder_2``, ``vae``, ``scheduler``);
its UNet config matches the full copy that public SDXL code vendors (e.g. ControlNeXt's
``UNET_CONFIG``), and the built sizes match the published parameter counts
(tests/lit_models/test_plan.py). ``stable-diffusion-3-medium-diffusers`` likewise holds SD3
medium's files but the T5 encoder's (``text_encoder_3``, which this project leaves out).
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "architectures"
SHIPPED = {
    "lmsys/vicuna-7b-v1.5": "vicuna-7b-v1.5",  # Llama-2-7B architecture
    "Vision-CAIR/vicuna-7b": "vicuna-7b-v0",  # Llama-1-7B architecture (merged Vicuna v0, MiniGPT-4's)
    "stabilityai/stable-diffusion-2-1-base": "stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-xl-base-1.0": "stable-diffusion-xl-base-1.0",
    "stabilityai/stable-diffusion-3-medium-diffusers": "stable-diffusion-3-medium-diffusers",
    "Salesforce/blip2-itm-vit-g": "blip2-itm-vit-g",  # EVA ViT-g + Q-Former
    "Salesforce/blip2-flan-t5-xxl": "blip2-flan-t5-xxl",  # EVA ViT-g + Q-Former (+ T5-XXL, not built)
    # one real model per tested LLM family (minigpt5/families.py, configs/model/*.yaml)
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-instruct-v0.3",
    "google/gemma-2-9b-it": "gemma-2-9b-it",
    "microsoft/Phi-3-mini-4k-instruct": "phi-3-mini-4k-instruct",
    "EleutherAI/pythia-6.9b": "pythia-6.9b",  # GPT-NeoX architecture
}


def architecture_source(path: str) -> str:
    """Where to read the config of ``path`` from: the folder itself when it exists locally,
    else the shipped copy for a known hub id, else the hub id (needs the hub)."""
    if os.path.isdir(path) or path not in SHIPPED:
        return path
    return str(SHIPPED_DIR / SHIPPED[path])
