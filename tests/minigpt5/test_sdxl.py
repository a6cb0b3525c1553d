"""SDXL as the decoder: tiny build, stage-1 losses, CAP targets, guided sampling, loading a pipeline folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from minigpt5.builders import build_components
from minigpt5.config import ConfigError, DiffusionConfig, MiniGPT5Config
from minigpt5.model import MiniGPT5
from minigpt5.sdxl import DualTextEncoder, pack, time_ids, unpack
from minigpt5.sequences import tokenize_for_text_encoder


def sdxl_config(**diffusion) -> MiniGPT5Config:
    return MiniGPT5Config(diffusion=DiffusionConfig(**{"kind": "sdxl", "latent_space": "vae", **diffusion}))


@pytest.fixture(scope="module")
def model() -> MiniGPT5:
    torch.manual_seed(0)
    return MiniGPT5(sdxl_config())


def second_tokenizer(tokenizer):
    """The tokenizer padding with another token, as SDXL's tokenizer_2 pads with "!"."""
    second = copy.deepcopy(tokenizer)
    second.pad_token = tokenizer.unk_token
    return second


def test_tiny_sdxl_parts(model):
    encoders, unet = model.text_encoder, model.unet
    assert isinstance(encoders, DualTextEncoder)
    assert type(encoders.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == encoders.width == 32  # 16 + 16, concatenated
    assert model.pooled_width == encoders.pooled_width == 16
    assert model.condition_shape == (78, 32)  # 77 token rows + the pooled row


def test_stage1_forward_backward_reaches_the_mapper_and_its_pooled_head(model, stage1_batch):
    model.train()
    model.zero_grad()
    out = model(stage1_batch(model), torch.Generator().manual_seed(0))
    assert set(out.named()) == {"text", "ldm", "cap"}
    assert all(torch.isfinite(v) for v in out.named().values())
    out.total(model.cfg.loss).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["mapper.pooled.weight"].abs().sum() > 0
    assert grads["mapper.queries"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not any(p.requires_grad for p in model.unet.parameters())
    model.zero_grad()
    model.eval()


def test_cap_target_is_what_sdxl_encoders_give(model, stage1_batch):
    batch = stage1_batch(model)
    ids = batch["caption_ids"]
    target = model.caption_targets(batch)
    tokens, pooled = unpack(target, model.pooled_width)
    first, second = model.text_encoder.text_encoder, model.text_encoder.text_encoder_2
    with torch.no_grad():
        out1 = first(ids, output_hidden_states=True)
        out2 = second(model.text_encoder.ids_for_second(ids), output_hidden_states=True)
    assert target.shape == (2, 78, 32)
    assert tokens.shape == (2, 77, 16 + 16) and pooled.shape == (2, 16)
    torch.testing.assert_close(tokens, torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(pooled, out2.text_embeds)
    assert torch.equal(target[:, -1, 16:], torch.zeros(2, 16))  # the pooled row's padding


def test_cached_caption_embeddings_are_the_packed_rows(model, stage1_batch):
    batch = stage1_batch(model)
    encoded = model.caption_targets(batch)  # (2, 78, 32)
    assert torch.equal(model.caption_targets({**batch, "caption_embeddings": encoded}), encoded)
    with pytest.raises(ValueError, match=r"shape \(77, 32\).*needs \(78, 32\)"):
        model.caption_targets({**batch, "caption_embeddings": encoded[:, :-1]})


def test_second_encoder_ids_are_the_second_tokenizers(model):
    """SDXL's tokenizer_2 pads with its own token; the ids derived from the first tokenizer's equal its."""
    tokenizer = model.sd_tokenizer
    tokenizer_2 = second_tokenizer(tokenizer)
    captions = ["a red circle", "a blue square on the left"]
    ids = tokenize_for_text_encoder(tokenizer, captions, 12)
    encoders = DualTextEncoder(model.text_encoder.text_encoder, model.text_encoder.text_encoder_2,
                               tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer_2.pad_token_id)
    expected = tokenize_for_text_encoder(tokenizer_2, captions, 12)
    assert not torch.equal(ids, expected)
    assert torch.equal(encoders.ids_for_second(ids), expected)
    both = torch.tensor([[1, 5, 2, 7, 2, 9]])  # after the first end token (2) all is padding
    assert encoders.ids_for_second(both).tolist() == [[1, 5, 2] + [tokenizer_2.pad_token_id] * 3]


def test_guided_sampling_uses_the_zero_feature_output_as_null_conditioning(model, monkeypatch):
    seen = []
    forward = model.unet.forward

    def recording(sample, timestep, encoder_hidden_states, added_cond_kwargs=None, **kwargs):
        seen.append((encoder_hidden_states, added_cond_kwargs))
        return forward(sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(model.unet, "forward", recording)
    features = torch.randn(2, 8, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(3))
    images = model.images_from_features(features, scale=2.0, num_inference_steps=3, sampler="euler",
                                        generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert len(seen) == 3
    with torch.no_grad():
        null_tokens, null_pooled = unpack(model.mapper(torch.zeros(1, 8, model.llm.config.hidden_size)), 16)
        cond_tokens, cond_pooled = unpack(model.mapper(features), 16)
    for tokens, added in seen:  # one doubled call per step: unconditional half first
        assert tokens.shape == (4, 77, 32)
        torch.testing.assert_close(tokens[:2], null_tokens.expand(2, -1, -1))
        torch.testing.assert_close(tokens[2:], cond_tokens)
        torch.testing.assert_close(added["text_embeds"][:2], null_pooled.expand(2, -1))
        torch.testing.assert_close(added["text_embeds"][2:], cond_pooled)
        assert added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 4


def test_pack_unpack_round_trip_and_width_check():
    tokens, pooled = torch.randn(3, 5, 8), torch.randn(3, 6)
    got_tokens, got_pooled = unpack(pack(tokens, pooled), 6)
    assert torch.equal(got_tokens, tokens) and torch.equal(got_pooled, pooled)
    with pytest.raises(ValueError, match="wider"):
        pack(tokens, torch.randn(3, 9))
    assert time_ids(1024, 2, torch.device("cpu"), torch.float32).tolist() == [[1024, 1024, 0, 0, 1024, 1024]] * 2


# ---- a pipeline folder, loaded through from_pretrained ----

def write_pipeline(parts, folder) -> None:
    """A tiny SDXL folder as diffusers writes one (model_index.json names StableDiffusionXLPipeline)."""
    pipeline = StableDiffusionXLPipeline(
        vae=parts.latents.vae, text_encoder=parts.text_encoder.text_encoder,
        text_encoder_2=parts.text_encoder.text_encoder_2, tokenizer=parts.sd_tokenizer,
        tokenizer_2=second_tokenizer(parts.sd_tokenizer), unet=parts.unet, scheduler=parts.scheduler,
    )
    pipeline.save_pretrained(folder)


def test_sdxl_folder_loads_through_from_pretrained(tmp_path):
    parts = build_components(sdxl_config())
    folder = tmp_path / "sdxl"
    write_pipeline(parts, folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"

    loaded = build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae")))
    assert isinstance(loaded.text_encoder, DualTextEncoder)  # kind auto: read from model_index.json
    assert loaded.text_encoder.pad_id_2 == parts.sd_tokenizer.unk_token_id  # tokenizer_2's own padding
    for name in ("text_encoder", "unet", "latents"):
        a, b = getattr(parts, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    model = MiniGPT5(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae")), loaded)
    images = model.generate_images(["a red circle"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 16, 16)

    with pytest.raises(ConfigError, match="kind: sdxl"):  # read as an SD 2 folder, the UNet does not fit
        build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae", kind="sd")))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ConfigError, match="KandinskyPipeline.*StableDiffusionXLPipeline"):
        build_components(MiniGPT5Config(diffusion=DiffusionConfig(path=str(folder), latent_space="vae")))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="diffusion.kind"):
        DiffusionConfig(kind="kandinsky")
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_components(sdxl_config(cross_attention_dim=34))
