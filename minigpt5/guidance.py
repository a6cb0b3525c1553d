"""Classifier-free guidance: conditioning dropout in training, guided sampling at inference."""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import SchedulerMixin

from minigpt5.losses import Denoiser
from minigpt5.randomness import Generators, draw


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
    """Run the sampling scheduler from pure noise under guidance -> latents of ``shape``."""
    latents = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    scheduler.set_timesteps(num_inference_steps, device=cond.device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        pred = guided_prediction(denoiser, model_input, t, cond, uncond, scale)
        latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
    return latents
