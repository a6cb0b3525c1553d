"""Classifier-free guidance: conditioning dropout and guided sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from minigpt5.config import SAMPLER_NAMES, ConfigError, GuidanceConfig, MiniGPT5Config
from minigpt5.guidance import FLOW_SAMPLERS, SAMPLERS, build_sampler, drop_features, guided_prediction, sample_latents


class CountingDenoiser:
    """A nonlinear stand-in for the UNet that records every call's batch size."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        c = cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        return torch.tanh(x * c) + 0.01 * torch.as_tensor(t, dtype=x.dtype)


def test_drop_features_rate_and_rows():
    n, p = 20000, 0.1
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, 8, 4, generator=g) + 3.0  # no row is zero by chance
    out, dropped = drop_features(features, p, generator=torch.Generator().manual_seed(1))
    assert dropped.shape == (n,) and dropped.dtype == torch.bool
    # Binomial(20000, 0.1): std of the rate is 0.0021; 0.01 is ~4.7 standard deviations.
    assert abs(dropped.float().mean().item() - p) < 0.01
    assert torch.equal(out[dropped], torch.zeros_like(out[dropped]))
    assert torch.equal(out[~dropped], features[~dropped])
    assert (out[~dropped] != 0).all()


def test_drop_features_extremes_and_determinism():
    features = torch.randn(64, 8, 4) + 3.0
    out, dropped = drop_features(features, 0.0)
    assert not dropped.any() and torch.equal(out, features)
    a = drop_features(features, 0.5, torch.Generator().manual_seed(3))
    b = drop_features(features, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert 0 < int(a[1].sum()) < 64


def test_drop_features_passes_gradient_to_kept_rows_only():
    features = (torch.randn(50, 8, 4) + 3.0).requires_grad_()
    out, dropped = drop_features(features, 0.5, torch.Generator().manual_seed(4))
    out.sum().backward()
    assert torch.equal(features.grad[dropped], torch.zeros_like(features.grad[dropped]))
    assert torch.equal(features.grad[~dropped], torch.ones_like(features.grad[~dropped]))


@pytest.mark.parametrize("scale", [0.0, 2.0, 7.5])
def test_guided_prediction_matches_two_separate_calls_with_one_doubled_call(scale):
    g = torch.Generator().manual_seed(5)
    N = 3
    latents = torch.randn(N, 3, 8, 8, generator=g)
    cond = torch.randn(N, 77, 16, generator=g)
    uncond = torch.randn(N, 77, 16, generator=g)
    t = torch.tensor(500)
    reference = CountingDenoiser()
    pred_cond = reference(latents, t, cond)
    pred_uncond = reference(latents, t, uncond)
    expected = pred_uncond + scale * (pred_cond - pred_uncond)

    denoiser = CountingDenoiser()
    out = guided_prediction(denoiser, latents, t, cond, uncond, scale)
    assert denoiser.batch_sizes == [2 * N]  # exactly one call, doubled batch
    torch.testing.assert_close(out, expected)


def test_guided_prediction_scale_one_is_conditional_single_call():
    g = torch.Generator().manual_seed(6)
    latents, cond, uncond = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    denoiser = CountingDenoiser()
    out = guided_prediction(denoiser, latents, torch.tensor(10), cond, uncond, 1.0)
    assert denoiser.batch_sizes == [2]
    torch.testing.assert_close(out, CountingDenoiser()(latents, torch.tensor(10), cond))


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
def test_sample_latents_deterministic_under_seeded_generator(scheduler_cls):
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    shape = (2, 3, 8, 8)

    def run(seed: int, denoiser=None):
        denoiser = denoiser or CountingDenoiser()
        return sample_latents(
            denoiser, scheduler_cls(num_train_timesteps=1000, clip_sample=False), shape, cond, uncond,
            scale=3.0, num_inference_steps=4, generator=torch.Generator().manual_seed(seed),
        )

    counter = CountingDenoiser()
    a = run(0, counter)
    b = run(0)
    c = run(1)
    assert a.shape == shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert counter.batch_sizes == [4] * 4  # one doubled call per step


# ---- the sampler, by name ----

EXPECTED_CLASSES = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler,
                    "dpm++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
                    "euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler}


def test_sampler_names_match_the_config_choices():
    assert set(SAMPLERS) | set(FLOW_SAMPLERS) == set(SAMPLER_NAMES)
    assert set(SAMPLERS) == set(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_build_sampler_carries_the_training_schedule_over(name):
    # SD's own training schedule (scaled-linear betas), with v-prediction to see it carried.
    training = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                             beta_end=0.012, prediction_type="v_prediction", steps_offset=1)
    sampler = build_sampler(name, training.config)
    assert type(sampler) is EXPECTED_CLASSES[name]
    assert sampler.config.prediction_type == "v_prediction" and sampler.config.steps_offset == 1
    torch.testing.assert_close(sampler.alphas_cumprod, training.alphas_cumprod)


def test_pndm_skips_the_runge_kutta_warmup_as_the_sd_pipeline_does():
    sampler = build_sampler("pndm", DDPMScheduler(num_train_timesteps=1000).config)
    assert sampler.config.skip_prk_steps
    sampler.set_timesteps(50)
    assert len(sampler.prk_timesteps) == 0


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"guidance\.sampler must be one of pndm, ddim"):
        build_sampler("karras", DDPMScheduler().config)
    with pytest.raises(ConfigError, match=r"guidance\.sampler"):
        GuidanceConfig(sampler="karras")


def test_tiny_default_is_dpm_and_the_paper_preset_pndm():
    from lit_models.plan import read_settings

    root = Path(__file__).resolve().parents[2]
    assert MiniGPT5Config().guidance.sampler == "dpm++"
    paper = read_settings(["-c", str(root / "configs/uas.yaml"), "-c", str(root / "configs/model/paper.yaml")])
    assert paper.model.guidance.sampler == "pndm"
    tiny = read_settings(["-c", str(root / "configs/uas.yaml"), "-c", str(root / "configs/model/tiny.yaml")])
    assert tiny.model.guidance.sampler == "dpm++"


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_every_sampler_draws_a_finite_image_from_the_tiny_model(tiny_model, name):
    features = torch.randn(1, 8, tiny_model.cfg.llm.hidden_size, generator=torch.Generator().manual_seed(0))

    def draw(**kwargs):
        return tiny_model.images_from_features(features, num_inference_steps=3, scale=2.0,
                                               generator=torch.Generator().manual_seed(1), **kwargs)

    image = draw(sampler=name)
    res = tiny_model.cfg.diffusion.resolution
    assert image.shape == (1, 3, res, res) and torch.isfinite(image).all()
    assert image.min() >= -1 and image.max() <= 1
    tiny_model.cfg.guidance.sampler = name  # the config's choice is the default
    assert torch.equal(draw(), image)
    if name != "ddim":
        assert not torch.equal(draw(sampler="ddim"), image)  # the name changes the sampling
