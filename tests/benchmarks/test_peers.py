"""benchmarks/peers.py's comparisons at tiny sizes: the same tokens as Hugging Face ``generate``,
the same images as diffusers' ``StableDiffusionPipeline`` (which needs SD's scheduler settings),
and SDPA behind every attention layer that offers it. Timing is the script's; nothing here is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from minigpt5.architectures import SHIPPED_DIR
from minigpt5.builders import build_components
from minigpt5.config import DiffusionConfig, MiniGPT5Config
from minigpt5.generate import encode_prompt
from minigpt5.guidance import build_sampler
from minigpt5.model import MiniGPT5

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the scripts import each other by name
import peers  # noqa: E402

SD_SCHEDULER = json.loads((SHIPPED_DIR / "stable-diffusion-2-1-base" / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def model() -> MiniGPT5:
    """The tiny preset in a tiny VAE's latent space (16 px images, 8 px latents), as the pipeline needs."""
    return MiniGPT5(MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16))).eval()


def sample_both(model: MiniGPT5, sampler: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The pipeline's rewrites of the scheduler config, our images and the pipeline's, both in [0, 1]."""
    pipeline, rewritten = peers.build_pipeline(model, sampler)
    cond, uncond = peers.mapper_conditioning(model, 2, seed=0)
    runs = peers.image_runs(model, pipeline, cond, uncond, sampler=sampler, steps=6, scale=2.0, seed=1)
    ours, theirs = (run() for run in runs.values())
    return rewritten, ours, theirs


def test_same_tokens_as_hugging_face_generate(model):
    prompt_ids, _ = encode_prompt(model, "a red circle then a blue square on the white background")
    ours, theirs = (run() for run in peers.text_runs(model, prompt_ids, 24).values())
    assert len(ours) == 24 and peers.first_difference(ours, theirs) is None
    assert peers.first_difference([1, 2, 3], [1, 5, 3]) == 1 and peers.first_difference([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("sampler", ["pndm", "ddim", "dpm++"])
def test_images_equal_the_sd_pipelines(model, sampler):
    rewritten, ours, theirs = sample_both(model, sampler)
    assert rewritten == {}  # the pipeline found nothing to change in the scheduler config
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert float((ours - theirs).abs().max()) <= peers.IMAGE_TOLERANCE


@pytest.mark.parametrize("sampler", ["pndm", "ddim"])
def test_a_scheduler_without_sds_settings_draws_other_images(sampler):
    """diffusers' DDPM defaults (steps_offset 0, clip_sample on), as the tiny preset had them:
    the pipeline rewrites both and the images part, so the test above guards the settings."""
    model = MiniGPT5(MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16))).eval()
    model.scheduler = DDPMScheduler(num_train_timesteps=1000)
    rewritten, ours, theirs = sample_both(model, sampler)
    assert rewritten["steps_offset"] == (0, 1)
    assert float((ours - theirs).abs().max()) > 100 * peers.IMAGE_TOLERANCE


@pytest.mark.parametrize("latent_space", ["vae", "pixel"])
def test_tiny_scheduler_has_sd_sampling_settings(latent_space):
    cfg = MiniGPT5Config(diffusion=DiffusionConfig(latent_space=latent_space, resolution=16))
    training = build_components(cfg).scheduler.config
    for name in ("ddpm", "ddim", "pndm"):
        sampler = build_sampler(name, training).config
        for key in peers.SCHEDULER_KEYS:
            assert training[key] == sampler[key] == SD_SCHEDULER[key], (name, key)


def test_every_attention_layer_uses_sdpa_where_torch_offers_it(model):
    prompt_ids, _ = encode_prompt(model, "a red circle")
    counts = peers.attention_report(model, prompt_ids)
    for part in ("LLM", "UNet", "VAE decoder", "mapper, training"):
        layers, sdpa, native = counts[part]
        assert layers > 0 and sdpa == layers and native == 0, (part, counts[part])
    # In eval under no_grad the mapper's self-attentions take torch's native fast path (SDPA's fused
    # kernels on CUDA, its own matmul + softmax on the CPU); the cross-attention, never fast-pathed, SDPA.
    layers, sdpa, native = counts["mapper, eval"]
    assert sdpa + native == layers and sdpa >= 1
    assert model.llm.config._attn_implementation == "sdpa" and not model.training
