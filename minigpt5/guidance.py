"""Classifier-free guidance: conditioning dropout in training, guided sampling at inference."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from minigpt5.config import ConfigError
from minigpt5.losses import Denoiser
from minigpt5.randomness import Generators, draw

# guidance.sampler -> (scheduler class, settings over the training scheduler's config).
# pndm is what StableDiffusionPipeline samples with for SD 2.1 base, the official code's
# sampler (its model.py:95-100 and 328 call the pipeline with its own scheduler, 50 steps);
# SD's scheduler_config.json sets skip_prk_steps, set here too for configs without it (the
# tiny preset's). The names, with FLOW_SAMPLERS', must match minigpt5.config.Sampler (a test checks).
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
}
# The samplers of flow-matching decoders (diffusion.kind sd3), built from their training scheduler's config.
FLOW_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
}


def build_sampler(name: str, training_config: Mapping[str, Any], flow: bool = False) -> SchedulerMixin:
    """The sampling scheduler ``name`` built from the training scheduler's config (betas,
    prediction type, timestep offset carry over); ``flow``: a flow-matching decoder's."""
    samplers = FLOW_SAMPLERS if flow else SAMPLERS
    if name not in samplers:
        decoder = " for a flow-matching decoder (diffusion.kind sd3)" if flow else ""
        raise ConfigError(f"guidance.sampler must be one of {', '.join(samplers)}{decoder}; got {name!r}")
    cls, settings = samplers[name]
    return cls.from_config(training_config, **settings)


def drop_features(features: torch.Tensor, p: float, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero each sample's voken features (N, n, D) with probability ``p``.

    ``generator``: one for the batch or one per sample. Returns the features and the
    boolean drop mask (N,). The null conditioning is
    therefore mapper(zeros), exactly what guided sampling uses as unconditional.
    """
    dropped = draw(torch.rand, (features.shape[0],), generator, device=features.device) < p  # (N,)
    return features.masked_fill(dropped[:, None, None], 0.0), dropped


def guided_prediction(
    denoiser: Denoiser,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """uncond + scale * (cond - uncond) from one batched denoiser call."""
    if scale == 1.0:
        return denoiser(latents, timestep, cond)
    both = denoiser(torch.cat([latents, latents]), timestep, torch.cat([uncond, cond]))  # (2N, ...)
    pred_uncond, pred_cond = both.chunk(2)
    return pred_uncond + scale * (pred_cond - pred_uncond)


@torch.no_grad()
def sample_latents(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    shape: tuple[int, ...],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    scale: float,
    num_inference_steps: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Run the sampling scheduler from pure noise under guidance -> latents of ``shape``.

    ``generator`` also feeds the steps of stochastic schedulers (DDPM, ancestral Euler, ...);
    schedulers whose ``step`` takes none (PNDM) are deterministic after the first noise.
    """
    latents = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    scheduler.set_timesteps(num_inference_steps, device=cond.device)
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts from the noise itself
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        # flow-matching schedulers scale nothing (they have no scale_model_input)
        model_input = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        pred = guided_prediction(denoiser, model_input, t, cond, uncond, scale)
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    return latents
