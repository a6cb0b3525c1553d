"""Which image decoder a config names (``diffusion.kind``), and what each kind's parts are.

sd: SD 1.x/2.x, a CLIP text encoder and a ``UNet2DConditionModel``; sdxl: two CLIP encoders
and a UNet reading a pooled embedding and time ids (:mod:`minigpt5.sdxl`); sd3: two CLIP
encoders and a flow-matching ``SD3Transformer2DModel`` (:mod:`minigpt5.sd3`).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from minigpt5 import sd3, sdxl
from minigpt5.architectures import architecture_source
from minigpt5.config import ConfigError, DiffusionConfig, LossConfig
from minigpt5.loading import load_pretrained
from minigpt5.losses import Denoiser, flow_matching_loss, ldm_loss
from minigpt5.randomness import Generators
from minigpt5.sdxl import DualTextEncoder, pooled_width

# model_index.json's _class_name -> diffusion.kind
PIPELINE_KINDS = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}
PIPELINES = {kind: name for name, kind in PIPELINE_KINDS.items()}  # diffusion.kind -> its pipeline's class name
# per kind: the denoiser's subfolder and class, the training scheduler's class, the first text encoder's class
DENOISERS: dict[str, tuple[str, type[nn.Module]]] = {
    "sd": ("unet", UNet2DConditionModel), "sdxl": ("unet", UNet2DConditionModel),
    "sd3": ("transformer", SD3Transformer2DModel),
}
TRAINING_SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "sd": DDPMScheduler, "sdxl": DDPMScheduler, "sd3": FlowMatchEulerDiscreteScheduler,
}
FIRST_ENCODERS: dict[str, type[PreTrainedModel]] = {
    "sd": CLIPTextModel, "sdxl": CLIPTextModel, "sd3": CLIPTextModelWithProjection,
}


def decoder_kind(cfg: DiffusionConfig, empty: bool = False) -> str:
    """``diffusion.kind``; for auto, what the folder's model_index.json ``_class_name`` names
    (sd for the tiny parts and for a folder without one, such as a tiny SD exported before pretrain-sd wrote one)."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.path is None:
        return "sd"
    source = architecture_source(cfg.path) if empty else cfg.path
    if os.path.isdir(source):
        index = os.path.join(source, "model_index.json")
        if not os.path.isfile(index):
            return "sd"
        with open(index, encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
    else:
        name = load_pretrained("SD pipeline index", source, DiffusionPipeline.load_config).get("_class_name")
    if name not in PIPELINE_KINDS:
        raise ConfigError(
            f"diffusion.path {cfg.path!r} holds a {name} (model_index.json); supported: "
            f"{', '.join(f'{k} ({v})' for k, v in PIPELINE_KINDS.items())}. Set diffusion.kind to sd, sdxl "
            "or sd3 to read its parts as that decoder's"
        )
    return PIPELINE_KINDS[name]


def condition_widths(denoiser: nn.Module) -> tuple[int, Optional[int]]:
    """The token-row width and the pooled embedding's width (None: none) ``denoiser`` reads."""
    config = denoiser.config
    if isinstance(denoiser, SD3Transformer2DModel):
        return config.joint_attention_dim, config.pooled_projection_dim
    return config.cross_attention_dim, pooled_width(denoiser)


def check_decoder(kind: str, text_encoder: nn.Module, denoiser: nn.Module) -> None:
    """Raise naming the mismatch when the text encoder(s) and the denoiser of a ``kind`` decoder do not fit."""
    expected = DENOISERS[kind][1]
    if not isinstance(denoiser, expected):
        raise ConfigError(f"diffusion.kind {kind} needs a {expected.__name__}, got a {type(denoiser).__name__}")
    width, pooled = condition_widths(denoiser)
    if kind == "sd" and pooled is not None:
        raise ConfigError("the UNet reads a pooled text embedding and time ids (SDXL's); set diffusion.kind: sdxl")
    if kind == "sdxl" and pooled is None:
        raise ConfigError("diffusion.kind is sdxl but the UNet reads no pooled text embedding (addition_embed_type "
                          "text_time); set diffusion.kind: sd")
    encoder = (text_encoder.width, text_encoder.pooled_width) if isinstance(text_encoder, DualTextEncoder) else (
        text_encoder.config.hidden_size, None)
    if encoder != (width, pooled):
        raise ConfigError(f"the text encoders give (width, pooled width) {encoder} but the {type(denoiser).__name__} "
                          f"reads {(width, pooled)}")


def join_encoders(
    kind: str, first: PreTrainedModel, second: CLIPTextModelWithProjection, eos_id: int, pad_id: int, pad_id_2: int,
    joint_width: Optional[int] = None,
) -> DualTextEncoder:
    """SDXL's or SD3's two encoders as one; ``joint_width``: SD3's transformer's, the rows' padded width."""
    if kind == "sdxl":
        return DualTextEncoder(first, second, eos_id, pad_id, pad_id_2)
    return DualTextEncoder(first, second, eos_id, pad_id, pad_id_2, pooled_from_both=True, width=joint_width)


def denoise(denoiser: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
            resolution: int) -> torch.Tensor:
    """Any kind's denoiser on noisy latents (N, c, h, w) under conditioning (N, Q, C) (SDXL's and SD3's
    packed, :mod:`minigpt5.sdxl`); ``resolution``: the images' size in pixels, SDXL's time ids."""
    if isinstance(denoiser, SD3Transformer2DModel):
        return sd3.denoise(denoiser, noisy, timesteps, cond)
    if pooled_width(denoiser) is not None:
        return sdxl.denoise(denoiser, noisy, timesteps, cond, resolution)
    return denoiser(noisy, timesteps, encoder_hidden_states=cond).sample


def diffusion_loss(denoiser: Denoiser, scheduler: SchedulerMixin, latents: torch.Tensor, cond: torch.Tensor,
                   loss: LossConfig, generator: Generators = None) -> torch.Tensor:
    """The decoder's training loss for latents (N, c, h, w) under conditioning (N, Q, C): flow matching
    under SD3's scheduler (``loss``'s timestep density), else the LDM loss (``loss.min_snr_gamma``)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return flow_matching_loss(denoiser, scheduler, latents, cond, density=loss.timestep_density,
                                  logit_mean=loss.logit_mean, logit_std=loss.logit_std, generator=generator)
    return ldm_loss(denoiser, scheduler, latents, cond, min_snr_gamma=loss.min_snr_gamma, generator=generator)
