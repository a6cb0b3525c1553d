"""The per-kind dispatch every trainer shares: each decoder's call and its training loss."""

from __future__ import annotations

import pytest
import torch

from minigpt5 import decoders
from minigpt5.builders import build_diffusion
from minigpt5.config import DiffusionConfig, LossConfig
from minigpt5.losses import flow_matching_loss, ldm_loss


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3"])
def test_the_loss_is_flow_matching_for_sd3_and_the_ldm_loss_otherwise(kind):
    torch.manual_seed(0)
    text_encoder, denoiser, _, scheduler = build_diffusion(DiffusionConfig(kind=kind), 300)
    with torch.no_grad():
        cond = text_encoder(torch.randint(4, 300, (2, 8)))[0]  # (2, 8, 32); SDXL, SD3: (2, 9, 32)
    latents = torch.randn(2, 3, 16, 16)

    def call(noisy, timesteps, c):
        return decoders.denoise(denoiser, noisy, timesteps, c, resolution=16)

    def same(settings: LossConfig, direct) -> bool:
        """The shared loss under ``settings`` is ``direct``'s, from the same draws."""
        with torch.no_grad():
            shared = decoders.diffusion_loss(call, scheduler, latents, cond, settings, torch.Generator().manual_seed(1))
            own = direct(call, scheduler, latents, cond, generator=torch.Generator().manual_seed(1))
            return torch.equal(shared, own)

    if kind == "sd3":
        assert same(LossConfig(timestep_density="uniform"),
                    lambda *a, **k: flow_matching_loss(*a, density="uniform", **k))
        assert same(LossConfig(logit_mean=0.5, logit_std=2.0),
                    lambda *a, **k: flow_matching_loss(*a, logit_mean=0.5, logit_std=2.0, **k))
    else:
        assert same(LossConfig(min_snr_gamma=None), lambda *a, **k: ldm_loss(*a, min_snr_gamma=None, **k))
        assert same(LossConfig(min_snr_gamma=2.0), lambda *a, **k: ldm_loss(*a, min_snr_gamma=2.0, **k))
