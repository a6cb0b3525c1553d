"""Cached SD text-encoder output on captions: encode-latents --captions, the data path, and the
same CAP loss as running the text encoder in the step."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.caption_cache import CaptionCacheError, caption_record
from data_modules.cc3m import CC3MDataModule
from data_modules.convert.cli import main as data_main
from data_modules.convert.latents import encode_latents
from data_modules.shard_reader import read_shard
from data_modules.shards import expand_shards
from data_modules.synthetic import write_synthetic
from data_modules.writer import write_shards
from minigpt5.builders import build_text_encoder, text_encoder_name
from minigpt5.config import DiffusionConfig, LLMConfig, LossConfig, MiniGPT5Config, TemplateConfig
from minigpt5.model import MiniGPT5
from minigpt5.sequences import tokenize_for_text_encoder

CFG = MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Synthetic caption/image shards (2 x 8 samples), a copy with latents only, and one with both caches."""
    root = tmp_path_factory.mktemp("caption_pairs")
    raw = write_synthetic(root / "raw", num=16, val_num=0, size=24, seed=0, shard_size=8).train
    latents_only = encode_latents(raw, root / "latents", CFG, batch_size=5, device="cpu").spec
    both = encode_latents(raw, root / "both", CFG, batch_size=5, device="cpu", captions=True)
    return raw, latents_only, both


@pytest.fixture(scope="module")
def model() -> MiniGPT5:
    """The tiny VAE model, its trainable parts drawn from seed 0 (the global RNG left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MiniGPT5(CFG)


def read(spec: str) -> list[dict]:
    """Every sample of the shards of ``spec``, in order, read strictly."""
    return [sample for url in expand_shards(spec) for sample in read_shard(url)]


def batches(spec: str, cfg: MiniGPT5Config = CFG, **kwargs) -> list[dict]:
    kwargs = {"batch_size": 4, "num_workers": 0, "samples_per_epoch": 12, "shuffle_buffer": 4, **kwargs}
    dm = CC3MDataModule(spec, model_config=cfg, **kwargs)
    dm.setup("fit")
    return [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]


def loss_and_grads(model: MiniGPT5, batch: dict, seed: int = 7) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Training-mode named losses (CFG dropout on) and the trainable grads, noise from ``seed``."""
    model.train()
    model.zero_grad()
    out = model(batch, generator=torch.Generator().manual_seed(seed))
    out.total(model.cfg.loss).backward()
    losses = {k: v.detach() for k, v in out.named().items()}
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- encode-latents --captions ----

def test_encode_latents_with_captions_writes_the_text_encoders_output(pairs, model):
    raw, _, both = pairs
    assert (both.written, both.captions) == (16, 16) and "16 caption embeddings written" in str(both)
    assert encode_latents(raw, both.spec + "-again", CFG, device="cpu").captions is None  # not asked for
    for before, after in zip(read(raw), read(both.spec)):
        assert set(after) - set(before) == {"latent.npy", "latent.json", "caption_embedding.npy", "caption_embedding.json"}
        assert json.loads(after["caption_embedding.json"]) == caption_record(CFG)
        embedding = np.load(io.BytesIO(after["caption_embedding.npy"]))
        assert embedding.dtype == np.float32 and embedding.shape == (77, 32)  # (L, C)
        ids = tokenize_for_text_encoder(model.sd_tokenizer, [before["txt"].decode()], 77)
        expected = model.encode_captions(ids)[0].numpy()  # the model's own encoder, alone, not in a batch of 5
        np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)


def test_samples_without_a_caption_keep_their_latents_and_are_counted(tmp_path, caplog):
    image = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(image, format="JPEG")
    samples = [{"__key__": "a", "jpg": image.getvalue(), "txt": "a red square"},
               {"__key__": "b", "jpg": image.getvalue(), "txt": "  "},
               {"__key__": "c", "jpg": image.getvalue()}]
    spec = write_shards(str(tmp_path / "in-%06d.tar"), samples, 10)[0]
    with caplog.at_level(logging.WARNING):
        summary = encode_latents(spec, tmp_path / "out", CFG, device="cpu", captions=True)
    assert (summary.written, summary.captions, dict(summary.problems)) == (3, 1, {"no_caption": 2})
    assert "sample 'b'" in caplog.text and "sample 'c'" in caplog.text
    written = {s["__key__"]: s for s in read(summary.spec)}
    assert "caption_embedding.npy" in written["a"] and "latent.npy" in written["c"]
    assert not {"caption_embedding.npy", "caption_embedding.json"} & set(written["b"])


def test_cli_flag_and_a_rerun_without_it_drops_the_old_embeddings(pairs, tmp_path, capsys):
    raw, _, both = pairs
    args = ["encode-latents", "--set", "diffusion.latent_space=vae", "--workers", "0", "--device", "cpu"]
    assert data_main(args + ["--shards", raw, "--out", str(tmp_path / "cli"), "--captions"]) == 0
    assert "16 caption embeddings written" in capsys.readouterr().out
    assert all("caption_embedding.npy" in s for s in read(str(tmp_path / "cli")))
    assert data_main(args + ["--shards", both.spec, "--out", str(tmp_path / "plain")]) == 0
    assert not any("caption_embedding.npy" in s for s in read(str(tmp_path / "plain")))


# ---- the data path ----

def test_cached_shards_give_caption_embeddings_and_off_ignores_them(pairs):
    _, _, both = pairs
    batch = batches(both.spec, caption_embeddings="require")[0]
    assert batch["caption_embeddings"].shape == (4, 77, 32) and "caption_cached" not in batch
    assert batch["caption_ids"].shape == (4, 77)  # still there: the length, and the null caption's
    assert "caption_embeddings" not in batches(both.spec, caption_embeddings="off")[0]
    no_cap = MiniGPT5Config(diffusion=CFG.diffusion, loss=LossConfig(cap_weight=0.0))
    assert "caption_embeddings" not in batches(both.spec, no_cap, caption_embeddings="require")[0]  # nothing reads them


def test_require_refuses_shards_without_embeddings_and_auto_falls_back(pairs):
    _, latents_only, _ = pairs
    with pytest.raises(CaptionCacheError, match="sample '.*' has no cached caption embeddings.*"
                                                "data.caption_embeddings is 'require'.*encode-latents --captions"):
        batches(latents_only, caption_embeddings="require")
    assert "caption_embeddings" not in batches(latents_only, caption_embeddings="auto")[0]
    with pytest.raises(ValueError, match="data.caption_embeddings must be one of off, auto, require; got 'yes'"):
        CC3MDataModule(latents_only, caption_embeddings="yes")


@pytest.mark.parametrize(
    "other, named",
    [
        (MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16, torch_dtype="bfloat16")),
         "dtype: cache 'float32', this run 'bfloat16'"),
        (MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16, text_max_length=40)),
         "max_length: cache 77, this run 40"),
        (MiniGPT5Config(llm=LLMConfig(hidden_size=48), diffusion=CFG.diffusion), "text_encoder: cache 'tiny-clip"),
        (MiniGPT5Config(template=TemplateConfig(normalise_captions=True), diffusion=CFG.diffusion),
         "captions: cache 'as written', this run 'normalised'"),
    ],
)
def test_embeddings_made_by_another_encoder_dtype_length_or_wording_are_refused(pairs, other, named):
    _, _, both = pairs
    with pytest.raises(CaptionCacheError, match="caption embeddings were cached for another setup") as err:
        batches(both.spec, other, latents="off", caption_embeddings="auto")
    assert named in str(err.value) and "sample '" in str(err.value)


def test_text_encoder_name_follows_its_weights():
    assert text_encoder_name(MiniGPT5Config(diffusion=DiffusionConfig(path="/models/sd21"))) == "clip:/models/sd21"
    # The tiny encoder is drawn after the tiny LLM: the LLM's size changes its weights, and its name.
    wider = MiniGPT5Config(llm=LLMConfig(hidden_size=48))
    assert text_encoder_name(wider) != text_encoder_name(MiniGPT5Config())
    alone, other = build_text_encoder(MiniGPT5Config()), build_text_encoder(wider)
    model_encoder = MiniGPT5(MiniGPT5Config()).text_encoder
    for (name, a), b, c in zip(alone.named_parameters(), model_encoder.parameters(), other.parameters()):
        assert torch.equal(a, b), name  # built alone, the weights the model has
    assert not all(torch.equal(a, c) for a, c in zip(alone.parameters(), other.parameters()))


# ---- same loss, same grads ----

def test_cached_and_on_the_fly_cap_targets_give_the_same_losses_and_grads(pairs, model):
    raw, _, both = pairs
    on_the_fly = batches(raw, latents="off", caption_embeddings="off")
    cached = batches(both.spec, latents="require", caption_embeddings="require")
    assert len(on_the_fly) == len(cached) == 3
    for step, (a, b) in enumerate(zip(on_the_fly, cached)):
        assert a["captions"] == b["captions"] and "caption_embeddings" in b
        losses_a, grads_a = loss_and_grads(model, a, seed=step)
        losses_b, grads_b = loss_and_grads(model, b, seed=step)
        assert losses_a.keys() == losses_b.keys() == {"text", "ldm", "cap"}
        for name in losses_a:  # cached in batches of 5, encoded here in batches of 4: equal up to rounding
            torch.testing.assert_close(losses_b[name], losses_a[name], rtol=1e-5, atol=1e-7)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            scale = float(grads_a[name].abs().max())
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5 * scale)


def test_the_models_own_embeddings_give_a_bit_identical_loss_and_a_mixed_batch_the_same(model, caption_batch):
    batch = caption_batch(model, ["a red circle", "a blue square", "a green triangle"], torch.Generator().manual_seed(0))
    embeddings = model.encode_captions(batch["caption_ids"])  # (3, 77, 32)
    reference, grads = loss_and_grads(model, batch)  # also encodes the null caption, once for all steps
    encoded = []
    hook = model.text_encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    cached, cached_grads = loss_and_grads(model, dict(batch, caption_embeddings=embeddings))
    assert encoded == []  # the text encoder no longer runs in the step
    assert all(torch.equal(cached[k], reference[k]) for k in reference)
    assert all(torch.equal(cached_grads[n], g) for n, g in grads.items())
    # Captions 0 and 2 cached, 1 encoded now (alone: equal to the batch-of-3 encoding up to rounding).
    mixed = dict(batch, caption_embeddings=embeddings[[0, 2]], caption_cached=torch.tensor([True, False, True]))
    losses, mixed_grads = loss_and_grads(model, mixed)
    hook.remove()
    assert encoded == [1]  # only the uncached caption
    for name in reference:
        torch.testing.assert_close(losses[name], reference[name], rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(mixed_grads[name], grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="caption_cached marks 2 of 3 captions, but the batch has 3 cached"):
        model(dict(mixed, caption_embeddings=embeddings))
    with pytest.raises(ValueError, match=r"shape \(77, 16\) per caption.*length 77 needs \(77, 32\)"):
        model(dict(batch, caption_embeddings=embeddings[..., :16]))
