"""Builders: tiny parts are deterministic and offline; pretrained paths load or fail clearly."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt5.builders import (
    PixelSpace,
    VAELatents,
    WeightsNotFoundError,
    build_components,
    build_llm_tokenizer,
    llm_embedding_rows,
)
from minigpt5.config import DiffusionConfig, LLMConfig, MiniGPT5Config
from minigpt5.guidance import build_sampler
from minigpt5.model import MiniGPT5
from minigpt5.tokenizer import build_tiny_tokenizer


def _frozen_state(parts) -> dict[str, torch.Tensor]:
    state = {}
    for prefix, module in [("llm", parts.llm), ("text_encoder", parts.text_encoder), ("unet", parts.unet), ("latents", parts.latents)]:
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return state


# ---- missing weights ----

@pytest.mark.parametrize("path", ["/nonexistent/vicuna", "lmsys/vicuna-7b-v1.5"])
def test_missing_llm_raises_weights_not_found_naming_path(path):
    with pytest.raises(WeightsNotFoundError, match=path):
        build_components(MiniGPT5Config(llm=LLMConfig(path=path)))
    with pytest.raises(WeightsNotFoundError, match=path):
        MiniGPT5(MiniGPT5Config(llm=LLMConfig(path=path)))


@pytest.mark.parametrize("path", ["/nonexistent/sd-2-1", "stabilityai/stable-diffusion-2-1"])
def test_missing_diffusion_raises_weights_not_found_naming_path(path):
    with pytest.raises(WeightsNotFoundError, match=path) as info:
        build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=path)))
    assert isinstance(info.value, FileNotFoundError)
    assert "local folder" in str(info.value)


def test_empty_local_folder_raises_weights_not_found(tmp_path):
    folder = tmp_path / "empty-llm"
    folder.mkdir()
    with pytest.raises(WeightsNotFoundError, match=str(folder)):
        build_components(MiniGPT5Config(llm=LLMConfig(path=str(folder))))


# ---- tiny parts ----

def test_tiny_build_is_deterministic_and_leaves_global_rng_alone():
    cfg = MiniGPT5Config()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a = build_components(cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.manual_seed(456)  # a different global seed changes nothing in the frozen parts
    b = build_components(cfg)
    state_a, state_b = _frozen_state(a), _frozen_state(b)
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    assert a.voken_ids == b.voken_ids


def test_model_frozen_weights_independent_of_global_seed_trainable_follow_it():
    cfg = MiniGPT5Config()
    torch.manual_seed(1)
    m1 = MiniGPT5(cfg)
    torch.manual_seed(2)
    m2 = MiniGPT5(cfg)
    torch.manual_seed(1)
    m3 = MiniGPT5(cfg)
    for (name, p1), p2, p3 in zip(m1.named_parameters(), m2.parameters(), m3.parameters()):
        assert torch.equal(p1, p3), name  # same seed, same model
        if not p1.requires_grad or name.startswith("vokens."):
            assert torch.equal(p1, p2), name  # frozen and mean-initialised rows: seed-independent
    assert not torch.equal(m1.mapper.queries, m2.mapper.queries)


def test_tiny_parts_follow_config():
    cfg = MiniGPT5Config(
        llm=LLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48),
        diffusion=DiffusionConfig(cross_attention_dim=16, prediction_type="v_prediction"),
    )
    parts = build_components(cfg)
    assert parts.llm.config.hidden_size == 32 and parts.llm.config.num_hidden_layers == 1
    assert parts.llm.get_input_embeddings().weight.shape[0] == parts.voken_ids[0]
    assert parts.voken_ids == list(range(parts.voken_ids[0], parts.voken_ids[0] + 8))
    assert parts.tokenizer.convert_tokens_to_ids(cfg.vokens.tokens) == parts.voken_ids
    assert parts.unet.config.cross_attention_dim == 16
    assert parts.text_encoder.config.hidden_size == 16
    assert parts.scheduler.config.prediction_type == "v_prediction"
    # no x0 clipping at sampling, as SD 2.1's scheduler config (diffusers' DDPM default clips; DDIM inherits it)
    assert not parts.scheduler.config.clip_sample and not build_sampler("ddim", parts.scheduler.config).config.clip_sample
    assert isinstance(parts.latents, PixelSpace) and parts.unet.config.in_channels == 3
    for module in (parts.llm, parts.text_encoder, parts.unet):
        assert all(p.dtype == torch.float32 for p in module.parameters())


def test_tiny_vae_latent_space():
    parts = build_components(MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=32)))
    assert isinstance(parts.latents, VAELatents)
    assert parts.latents.downsample_factor == 2
    assert parts.unet.config.in_channels == 4 and parts.unet.config.sample_size == 16
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        lat = parts.latents.encode(pixels, torch.Generator().manual_seed(0))
        assert lat.shape == (2, 4, 16, 16)
        assert parts.latents.decode(lat).shape == (2, 3, 32, 32)


# ---- local pretrained folders ----

def test_local_llm_folder_with_padded_vocabulary(tmp_path):
    """An LLM whose embedding table is larger than its tokenizer gets fillers before the vokens."""
    folder = tmp_path / "llm"
    tok = build_tiny_tokenizer()
    rows = len(tok) + 17
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
    ))
    llm.save_pretrained(folder)
    tok.save_pretrained(folder)

    cfg = MiniGPT5Config(llm=LLMConfig(path=str(folder)))
    assert llm_embedding_rows(cfg.llm) == rows
    tokenizer, voken_ids = build_llm_tokenizer(cfg)
    assert voken_ids == list(range(rows, rows + 8))
    assert tokenizer.convert_tokens_to_ids("<ImageHere>") == rows + 8  # the input-image placeholder
    assert len(tokenizer) == rows + 9

    torch.manual_seed(0)
    model = MiniGPT5(cfg)
    assert model.voken_ids == voken_ids
    assert torch.equal(model.llm.get_input_embeddings().weight, llm.get_input_embeddings().weight)
    batch = model.caption_batch(["a red circle"])
    logits, hidden = model.llm_forward(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (1, batch["input_ids"].shape[1], rows + 8)
    assert hidden.shape[-1] == 32


def test_local_diffusion_folder_round_trip(tmp_path):
    cfg = MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16))
    parts = build_components(cfg)
    folder = tmp_path / "sd"
    parts.sd_tokenizer.save_pretrained(folder / "tokenizer")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.unet.save_pretrained(folder / "unet")
    parts.scheduler.save_pretrained(folder / "scheduler")
    parts.latents.vae.save_pretrained(folder / "vae")

    loaded = build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae")))
    assert isinstance(loaded.latents, VAELatents)
    for name in ("text_encoder", "unet", "latents"):
        a, b = getattr(parts, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"
    assert len(loaded.sd_tokenizer) == len(parts.sd_tokenizer)

    # A folder without the VAE the config asks for names the missing subfolder.
    import shutil

    shutil.rmtree(folder / "vae")
    with pytest.raises(WeightsNotFoundError, match="vae"):
        build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae")))


def test_v_prediction_folder_trains_on_velocity(tmp_path):
    """A folder whose scheduler predicts v, as SD 2.1-768's does: the loaded model's LDM target is the velocity."""
    import json

    from minigpt5.losses import ldm_loss

    parts = build_components(MiniGPT5Config())
    folder = tmp_path / "sd-768"
    parts.sd_tokenizer.save_pretrained(folder / "tokenizer")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.unet.save_pretrained(folder / "unet")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({  # stabilityai/stable-diffusion-2-1's
        "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    }))
    model = MiniGPT5(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder))))
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert build_sampler("pndm", model.scheduler.config).config.prediction_type == "v_prediction"

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    cond, timesteps = model.null_condition(2), torch.tensor([100, 900])
    loss = ldm_loss(model.denoise, model.scheduler, x0, cond, noise=noise, timesteps=timesteps, min_snr_gamma=None)
    ab = model.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    with torch.no_grad():
        pred = model.denoise(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, timesteps, cond)
    velocity = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(loss, ((pred - velocity) ** 2).mean())
    assert not torch.allclose(loss, ((pred - noise) ** 2).mean())
