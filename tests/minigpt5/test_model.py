"""MiniGPT5: voken features, losses, train/eval modes, checkpoint keys, sampling."""

from __future__ import annotations

import pytest
import torch

from minigpt5.config import DiffusionConfig, GuidanceConfig, LossConfig, MiniGPT5Config, PeftSettings
from minigpt5.losses import cap_loss, text_loss
from minigpt5.model import MiniGPT5
from minigpt5.sequences import tokenize_for_text_encoder

CAPTIONS = ["a red circle", "a blue square on the left of the picture"]


def _build(**kwargs) -> MiniGPT5:
    torch.manual_seed(0)
    return MiniGPT5(MiniGPT5Config(**kwargs))


# ---- voken features ----

def test_voken_features_pick_positions_before_each_voken(tiny_model):
    tok, vokens = tiny_model.tokenizer, tiny_model.voken_ids
    words = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    row0 = [bos] + words("a red circle") + vokens + words("then a blue star") + vokens + [eos]
    row1 = [bos] + words("a dog") + vokens + [eos]
    T = len(row0)
    assert len(row1) < T
    input_ids = torch.tensor([row0, row1 + [pad] * (T - len(row1))])
    D = tiny_model.llm.config.hidden_size
    hidden = torch.randn(2, T, D, generator=torch.Generator().manual_seed(0))

    features = tiny_model.voken_features(input_ids, hidden)
    starts = [(0, i) for i, t in enumerate(row0) if t == vokens[0]] + [(1, i) for i, t in enumerate(row1) if t == vokens[0]]
    assert [s for _, s in starts][:2] == [1 + len(words("a red circle")), len(row0) - 9]
    assert features.shape == (3, 8, D)
    for n, (b, p) in enumerate(starts):  # row-major order of appearance
        for k in range(8):
            assert torch.equal(features[n, k], hidden[b, p - 1 + k]), (n, k)


def test_voken_features_with_real_hidden_states(tiny_model):
    batch = tiny_model.caption_batch(CAPTIONS)
    with torch.no_grad():
        _, hidden = tiny_model.llm_forward(batch["input_ids"], batch["attention_mask"])
    features = tiny_model.voken_features(batch["input_ids"], hidden)
    assert features.shape == (2, 8, tiny_model.llm.config.hidden_size)
    for b in range(2):
        p = batch["input_ids"][b].tolist().index(tiny_model.voken_ids[0])
        torch.testing.assert_close(features[b], hidden[b, p - 1:p + 7])


# PEFT's prefix tuning passes its prefix as ``past_key_values``, a name transformers now deprecates.
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("peft", ["none", "lora", "prefix"])
def test_llm_step_with_its_cache_continues_one_call(peft):
    """Two llm_step calls, the second given the first's cache, read as one call over both parts,
    under every adapter."""
    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(peft=PeftSettings(method=peft, num_virtual_tokens=4))).eval()
    with torch.no_grad():  # an untrained adapter is a no-op (LoRA B = 0): make it count
        for p in model.llm.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.tensor([model.tokenizer("a red circle and a blue square").input_ids])  # (1, T)
    embeds, mask = model.embed_inputs(ids), torch.ones_like(ids)  # (1, T, D), (1, T)
    k = 3
    with torch.no_grad():
        whole = model.llm_step(embeds, mask)
        first = model.llm_step(embeds[:, :-k], mask[:, :-k], use_cache=True)
        rest = model.llm_step(embeds[:, -k:], mask, first.cache, use_cache=True, logits_to_keep=1)
    assert whole.cache is None and rest.cache is not None
    assert whole.logits.shape[-1] == model.vokens.first_id + model.vokens.num_vokens  # vocabulary + vokens
    assert rest.logits.shape[1] == 1 and rest.hidden.shape[1] == k
    torch.testing.assert_close(rest.hidden, whole.hidden[:, -k:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest.logits, whole.logits[:, -1:], atol=1e-5, rtol=1e-5)


def test_voken_block_cut_by_sequence_boundary_raises(tiny_model):
    v = tiny_model.voken_ids
    D = tiny_model.llm.config.hidden_size
    at_start = torch.tensor([v + [2, 3]])
    with pytest.raises(ValueError, match="boundary"):
        tiny_model.voken_features(at_start, torch.zeros(1, 10, D))
    cut = torch.tensor([[1, 5, 6, 7] + v[:6]])  # [IMG0] at 4 needs positions 3..10 of 10
    with pytest.raises(ValueError, match="boundary"):
        tiny_model.voken_features(cut, torch.zeros(1, 10, D))
    fits = torch.tensor([[1, 5, 6] + v[:7]])  # [IMG0] at 3 needs positions 2..9
    assert tiny_model.voken_features(fits, torch.zeros(1, 10, D)).shape == (1, 8, D)


# ---- forward ----

def test_forward_returns_finite_named_losses(tiny_model, caption_batch):
    tiny_model.train()
    batch = caption_batch(tiny_model, CAPTIONS, torch.Generator().manual_seed(0))
    out = tiny_model(batch, generator=torch.Generator().manual_seed(1))
    assert set(out.named()) == {"text", "ldm", "cap"}
    for name, value in out.named().items():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0, name
    w = tiny_model.cfg.loss
    torch.testing.assert_close(out.total(w), w.text_weight * out.text + w.ldm_weight * out.ldm + w.cap_weight * out.cap)
    # The text loss is the plain next-token loss over the extended vocabulary.
    with torch.no_grad():
        logits, _ = tiny_model.llm_forward(batch["input_ids"], batch["attention_mask"])
    assert logits.shape[-1] == tiny_model.voken_ids[-1] + 1
    torch.testing.assert_close(out.text.detach(), text_loss(logits, batch["labels"]))


def test_forward_is_deterministic_under_generator(tiny_model, caption_batch):
    tiny_model.train()
    batch = caption_batch(tiny_model, CAPTIONS, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tiny_model(batch, generator=torch.Generator().manual_seed(5))
        b = tiny_model(batch, generator=torch.Generator().manual_seed(5))
        c = tiny_model(batch, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.ldm, b.ldm) and torch.equal(a.cap, b.cap)
    assert not torch.equal(a.ldm, c.ldm)


def test_cap_loss_absent_without_weight_or_captions(caption_batch):
    model = _build(loss=LossConfig(cap_weight=0.0))
    batch = caption_batch(model, CAPTIONS)
    out = model(batch)
    assert out.cap is None and "cap" not in out.named()
    torch.testing.assert_close(out.total(model.cfg.loss), 0.01 * out.text + out.ldm)

    model = _build()
    batch = caption_batch(model, CAPTIONS)
    del batch["caption_ids"]
    out = model(batch)
    assert out.cap is None and torch.isfinite(out.ldm)


def test_mismatched_images_raise(tiny_model, caption_batch):
    batch = caption_batch(tiny_model, CAPTIONS)
    batch["target_pixels"] = batch["target_pixels"][:1]
    with pytest.raises(ValueError, match="2 voken blocks but 1 target images"):
        tiny_model(batch)
    batch["target_pixels"] = torch.zeros(3, 3, 16, 16)
    with pytest.raises(ValueError, match="voken blocks"):
        tiny_model(batch)


def test_conditioning_dropout_only_in_training_and_aligned_with_empty_caption(caption_batch):
    model = _build(guidance=GuidanceConfig(cfg_dropout=0.999999))
    seen = []
    model.mapper.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out.detach())))
    batch = caption_batch(model, CAPTIONS)

    model.eval()
    with torch.no_grad():
        model(batch, generator=torch.Generator().manual_seed(0))
    assert (seen[-1][0].abs().sum(dim=(1, 2)) > 0).all()  # eval: nothing dropped

    model.train()
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
        features, cond = seen[-1]
        assert torch.equal(features, torch.zeros_like(features))  # train: all dropped
        null = model.null_condition(2)
        torch.testing.assert_close(cond, null)
        empty = tokenize_for_text_encoder(model.sd_tokenizer, ["", ""], batch["caption_ids"].shape[1])
        torch.testing.assert_close(out.cap, cap_loss(null, model.encode_captions(empty)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_forward_backward_both_prediction_types(prediction_type, caption_batch):
    model = _build(diffusion=DiffusionConfig(prediction_type=prediction_type))
    assert model.scheduler.config.prediction_type == prediction_type
    model.train()
    out = model(caption_batch(model, CAPTIONS), generator=torch.Generator().manual_seed(0))
    out.total(model.cfg.loss).backward()
    assert torch.isfinite(out.ldm)
    assert model.mapper.out.weight.grad.abs().sum() > 0


# ---- modes and checkpoint keys ----

def test_frozen_modules_stay_in_eval_mode(tiny_model):
    tiny_model.train()
    assert tiny_model.training and tiny_model.mapper.training and tiny_model.vokens.training
    for module in (tiny_model.llm, tiny_model.text_encoder, tiny_model.unet, tiny_model.latents):
        assert not module.training
        assert not any(m.training for m in module.modules())
    tiny_model.eval()
    assert not any(m.training for m in tiny_model.modules())
    tiny_model.train()
    assert tiny_model.mapper.training and not tiny_model.unet.training


def test_frozen_parameters_have_no_grad_flag(tiny_model):
    for name, p in tiny_model.named_parameters():
        if name.startswith(("llm.", "text_encoder.", "unet.", "latents.")):
            assert not p.requires_grad, name


def test_trainable_state_dict_holds_exactly_trainable_params(tiny_model):
    state = tiny_model.trainable_state_dict()
    trainable = {n: p for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert set(state) == set(trainable)
    for name, value in state.items():
        assert torch.equal(value, trainable[name])
    # The trainable part is small next to the frozen LLM + SD parts.
    n_state = sum(v.numel() for v in state.values())
    assert n_state < sum(p.numel() for p in tiny_model.parameters()) / 2

    # Round trip into a model built with another seed.
    torch.manual_seed(99)
    other = MiniGPT5(tiny_model.cfg)
    assert not torch.equal(other.mapper.queries, tiny_model.mapper.queries)
    result = other.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == set(other.state_dict()) - set(state)
    for name, p in other.named_parameters():
        assert torch.equal(p, dict(tiny_model.named_parameters())[name]), name


# ---- sampling ----

def test_generate_images_shape_range_and_determinism(tiny_model):
    tiny_model.eval()
    kwargs = dict(num_inference_steps=3, scale=2.0)
    a = tiny_model.generate_images(CAPTIONS, generator=torch.Generator().manual_seed(0), **kwargs)
    b = tiny_model.generate_images(CAPTIONS, generator=torch.Generator().manual_seed(0), **kwargs)
    c = tiny_model.generate_images(CAPTIONS, generator=torch.Generator().manual_seed(1), **kwargs)
    res = tiny_model.cfg.diffusion.resolution
    assert a.shape == (2, 3, res, res)
    assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_scale_zero_samples_the_null_conditioning(tiny_model):
    """Guidance 0 is the unconditional prediction, i.e. the mapper's output for zero features."""
    tiny_model.eval()
    D = tiny_model.llm.config.hidden_size
    features = torch.randn(2, 8, D, generator=torch.Generator().manual_seed(3))
    uncond = tiny_model.images_from_features(
        features, scale=0.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    zeros = tiny_model.images_from_features(
        torch.zeros(2, 8, D), scale=1.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    cond = tiny_model.images_from_features(
        features, scale=1.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(uncond, zeros, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cond, zeros, atol=1e-4)


def test_vae_latent_space_variant(caption_batch):
    model = _build(diffusion=DiffusionConfig(latent_space="vae", resolution=32))
    assert model.unet.config.in_channels == 4
    assert not model.latents.training and not any(p.requires_grad for p in model.latents.parameters())
    model.train()
    out = model(caption_batch(model, CAPTIONS), generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.named().values())
    out.total(model.cfg.loss).backward()
    model.eval()
    images = model.generate_images(["a red circle"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    again = model.generate_images(["a red circle"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)


def test_batch_without_target_images_gives_text_loss_and_a_zero_ldm(tiny_model):
    from minigpt5.sequences import Turn, pad_examples
    from minigpt5.templates import Conversation

    model = tiny_model.train()
    example = model.template.encode(Conversation("story", Turn("hi"), [Turn("hello there")]), 64)
    batch = pad_examples([example], model.tokenizer.pad_token_id)
    batch["target_pixels"] = torch.zeros(0, 3, model.cfg.diffusion.resolution, model.cfg.diffusion.resolution)
    out = model(batch)
    assert torch.isfinite(out.text) and out.text > 0 and out.ldm.item() == 0.0 and out.cap is None
    out.total(model.cfg.loss).backward()
    # every trainable mapper parameter is in the graph (zero gradient), as DDP requires
    assert all(p.grad is not None for p in model.mapper.parameters() if p.requires_grad)
