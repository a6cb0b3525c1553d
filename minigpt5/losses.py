"""The three MiniGPT-5 losses as pure functions (the LDM loss, or flow matching for SD3-family decoders)."""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin

from minigpt5.randomness import Generators, draw

IGNORE_INDEX = -100

# (noisy latents, timesteps, conditioning) -> model prediction, all (N, ...) tensors.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) at t predict labels (B, T) at t + 1.

    Positions labelled ``IGNORE_INDEX`` (padding, prompt, forced vokens) carry no loss.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    if not (shift_labels != IGNORE_INDEX).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def compute_snr(scheduler: SchedulerMixin, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep -> (N,)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return alphas_cumprod / (1.0 - alphas_cumprod)


def diffusion_target(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict, by the scheduler's ``prediction_type``."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported scheduler prediction_type {prediction_type!r} (epsilon or v_prediction)")


def ldm_loss(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    conditioning: torch.Tensor,
    *,
    noise: Optional[torch.Tensor] = None,
    timesteps: Optional[torch.Tensor] = None,
    min_snr_gamma: Optional[float] = 5.0,
    generator: Generators = None,
) -> torch.Tensor:
    """Latent-diffusion MSE for latents (N, c, h, w) under conditioning (N, Q, C).

    Noise and timesteps are drawn when not given (from ``generator``, one for the batch
    or one per sample). With ``min_snr_gamma`` each sample is
    weighted by min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v-prediction).
    """
    n = latents.shape[0]
    if noise is None:
        noise = draw(torch.randn, latents.shape, generator, device=latents.device, dtype=latents.dtype)
    if timesteps is None:
        randint = partial(torch.randint, 0, scheduler.config.num_train_timesteps)
        timesteps = draw(randint, (n,), generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    pred = denoiser(noisy, timesteps, conditioning)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    if min_snr_gamma is None:
        return per_sample.mean()
    snr = compute_snr(scheduler, timesteps)
    weights = snr.clamp(max=min_snr_gamma) / snr
    if scheduler.config.prediction_type == "v_prediction":
        weights = snr.clamp(max=min_snr_gamma) / (snr + 1)
    return (per_sample * weights).mean()


def cap_loss(mapped: torch.Tensor, caption_embeddings: torch.Tensor) -> torch.Tensor:
    """MSE between mapper output (N, Q, C) and the SD text encoder's caption output (N, Q, C)."""
    return F.mse_loss(mapped.float(), caption_embeddings.float())


def flow_matching_indices(
    n: int, num_train_timesteps: int, density: str, logit_mean: float, logit_std: float,
    generator: Generators, device: torch.device,
) -> torch.Tensor:
    """Training-schedule indices (n,) drawn as diffusers' SD3 training example draws them: u from a
    logit-normal (sigmoid of a normal) or uniform density, index floor(u * num_train_timesteps)."""
    if density == "logit_normal":
        u = torch.sigmoid(draw(torch.randn, (n,), generator, device=device) * logit_std + logit_mean)
    elif density == "uniform":
        u = draw(torch.rand, (n,), generator, device=device)
    else:
        raise ValueError(f"unsupported timestep density {density!r} (logit_normal or uniform)")
    # u rounds to 1.0 for large normal draws in float32: keep the last index in range
    return (u * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)


def flow_matching_loss(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    conditioning: torch.Tensor,
    *,
    noise: Optional[torch.Tensor] = None,
    indices: Optional[torch.Tensor] = None,
    density: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: Generators = None,
) -> torch.Tensor:
    """Rectified-flow MSE (SD3) for latents (N, c, h, w) under conditioning (N, Q, C).

    At the training schedule's index i (drawn by :func:`flow_matching_indices` when not given),
    sigma and the timestep are the scheduler's ``sigmas[i]`` and ``timesteps[i]``; the input is
    (1 - sigma) x0 + sigma noise and the target the velocity noise - x0, unweighted (the
    example's weighting for both densities), MSE in float32.
    """
    n = latents.shape[0]
    if noise is None:
        noise = draw(torch.randn, latents.shape, generator, device=latents.device, dtype=latents.dtype)
    if indices is None:
        indices = flow_matching_indices(n, scheduler.config.num_train_timesteps, density, logit_mean, logit_std,
                                        generator, latents.device)
    sigmas = scheduler.sigmas.to(latents.device)[indices].view(n, *[1] * (latents.dim() - 1))  # (N, 1, 1, 1)
    timesteps = scheduler.timesteps.to(latents.device)[indices]  # (N,)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    pred = denoiser(noisy.to(latents.dtype), timesteps, conditioning)
    target = noise - latents
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim()))).mean()
