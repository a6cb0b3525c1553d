"""SD3-family flow-matching decoders: tiny build, flow-matching loss, CAP targets, guided sampling, a pipeline folder."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from minigpt5.builders import WeightsNotFoundError, build_components, build_diffusion
from minigpt5.config import ConfigError, DiffusionConfig, GuidanceConfig, LossConfig, MiniGPT5Config
from minigpt5.decoders import check_decoder
from minigpt5.losses import flow_matching_indices, flow_matching_loss
from minigpt5.model import MiniGPT5
from minigpt5.sdxl import DualTextEncoder, unpack


def sd3_config(**diffusion) -> MiniGPT5Config:
    return MiniGPT5Config(diffusion=DiffusionConfig(**{"kind": "sd3", "latent_space": "vae", **diffusion}),
                          guidance=GuidanceConfig(sampler="flow-euler"))


@pytest.fixture(scope="module")
def model() -> MiniGPT5:
    torch.manual_seed(0)
    return MiniGPT5(sd3_config())


def test_tiny_sd3_parts(model):
    assert type(model.unet).__name__ == "SD3Transformer2DModel"
    assert isinstance(model.scheduler, FlowMatchEulerDiscreteScheduler) and model.flow_matching
    encoders = model.text_encoder
    assert isinstance(encoders, DualTextEncoder) and encoders.pooled_from_both
    assert (encoders.width, encoders.pooled_width) == (32, 16)  # joint attention width; 8 + 8 pooled
    assert model.condition_shape == (78, 32)


def test_stage1_forward_backward_reaches_the_mapper_and_its_pooled_head(model, stage1_batch):
    model.train()
    model.zero_grad()
    out = model(stage1_batch(model), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.named().values()) and out.cap is not None
    out.total(model.cfg.loss).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["mapper.pooled.weight"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.unet.parameters())
    model.zero_grad()
    model.eval()


def _denoiser(noisy, timesteps, cond):
    return 0.5 * noisy + timesteps.float().view(-1, 1, 1, 1) / 1000 + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_flow_matching_loss_matches_the_sd3_recipe():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    g = torch.Generator().manual_seed(0)
    x0, noise, cond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 5, 6)
    indices = torch.tensor([0, 500, 999])
    loss = flow_matching_loss(_denoiser, scheduler, x0, cond, noise=noise, indices=indices)
    sigma = scheduler.sigmas[indices].view(-1, 1, 1, 1)
    pred = _denoiser((1 - sigma) * x0 + sigma * noise, scheduler.timesteps[indices], cond)
    torch.testing.assert_close(loss, ((pred - (noise - x0)) ** 2).mean())
    assert torch.allclose(scheduler.timesteps[indices], sigma.view(-1) * 1000)  # timesteps follow the sigmas


def test_timestep_densities():
    draws = {d: flow_matching_indices(4000, 1000, d, 0.0, 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
             for d in ("logit_normal", "uniform")}
    middle = {d: ((i > 250) & (i < 750)).float().mean().item() for d, i in draws.items()}
    assert middle["uniform"] == pytest.approx(0.5, abs=0.03)
    assert middle["logit_normal"] > 0.65  # sigmoid(N(0, 1)) crowds the middle of the schedule
    assert all(i.min() >= 0 and i.max() <= 999 for i in draws.values())
    again = flow_matching_indices(4000, 1000, "logit_normal", 0.0, 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(again, draws["logit_normal"])
    with pytest.raises(ConfigError, match="loss.timestep_density"):
        LossConfig(timestep_density="mode")


def test_cap_target_is_what_the_two_clip_encoders_give(model, stage1_batch):
    ids = stage1_batch(model)["caption_ids"]
    tokens, pooled = unpack(model.caption_targets({"caption_ids": ids}), model.pooled_width)
    encoders = model.text_encoder
    with torch.no_grad():
        out1 = encoders.text_encoder(ids, output_hidden_states=True)
        out2 = encoders.text_encoder_2(encoders.ids_for_second(ids), output_hidden_states=True)
    rows = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)  # (2, 77, 16 + 16)
    torch.testing.assert_close(tokens, rows)
    torch.testing.assert_close(pooled, torch.cat([out1.text_embeds, out2.text_embeds], dim=-1))


def test_guided_flow_sampling_uses_the_zero_feature_output_as_null_conditioning(model, monkeypatch):
    seen = []
    forward = model.unet.forward

    def recording(*args, **kwargs):
        seen.append((kwargs["encoder_hidden_states"], kwargs["pooled_projections"], kwargs["timestep"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", recording)
    features = torch.randn(2, 8, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(3))
    images = model.images_from_features(features, scale=2.0, num_inference_steps=3,
                                        generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    with torch.no_grad():
        null_tokens, null_pooled = unpack(model.mapper(torch.zeros(1, 8, model.llm.config.hidden_size)), 16)
    assert len(seen) == 3
    for tokens, pooled, timestep in seen:
        torch.testing.assert_close(tokens[:2], null_tokens.expand(2, -1, -1))
        torch.testing.assert_close(pooled[:2], null_pooled.expand(2, -1))
        assert timestep.shape == (4,)
    assert seen[0][2][0] > seen[-1][2][0]  # the flow runs from noise (t = 1000) down
    with pytest.raises(ConfigError, match="flow-euler for a flow-matching decoder"):
        model.images_from_features(features, num_inference_steps=2, sampler="ddim")


def test_sd3_folder_loads_through_from_pretrained(tmp_path):
    parts = build_components(sd3_config())
    folder = tmp_path / "sd3"
    encoders = parts.text_encoder
    StableDiffusion3Pipeline(
        transformer=parts.unet, scheduler=parts.scheduler, vae=parts.latents.vae,
        text_encoder=encoders.text_encoder, tokenizer=parts.sd_tokenizer,
        text_encoder_2=encoders.text_encoder_2, tokenizer_2=parts.sd_tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    ).save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    cfg = MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae"),
                         guidance=GuidanceConfig(sampler="flow-euler"))
    loaded = build_components(cfg)
    assert type(loaded.unet).__name__ == "SD3Transformer2DModel"  # kind auto: read from model_index.json
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)
    for name in ("text_encoder", "unet", "latents"):
        a, b = getattr(parts, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    images = MiniGPT5(cfg, loaded).generate_images(["a red circle"], num_inference_steps=2,
                                                   generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(WeightsNotFoundError, match="subfolder 'unet'"):  # read as SDXL: it has no UNet
        build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae", kind="sdxl")))
    with pytest.raises(ConfigError, match="diffusion.kind sdxl needs a UNet2DConditionModel"):
        check_decoder("sdxl", loaded.text_encoder, loaded.unet)


def test_the_tiny_transformer_takes_its_configured_width_and_depth():
    _, transformer, _, _ = build_diffusion(DiffusionConfig(kind="sd3", transformer_width=48, transformer_layers=1), 300)
    config = transformer.config
    assert (config.num_layers, config.num_attention_heads * config.attention_head_dim) == (1, 48)
    assert (config.joint_attention_dim, config.caption_projection_dim) == (32, 48)  # the encoders' rows, projected
    with pytest.raises(ConfigError, match="multiple of 8"):
        DiffusionConfig(kind="sd3", transformer_width=20)
