"""Cached VAE latents: encode-latents output, the data path, and loss equality with on-the-fly encoding."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback
from PIL import Image
from terminal import Terminal
from webdataset.tariterators import tarfile_samples

from data_modules.cc3m import CC3MDataModule
from data_modules.convert.cli import main as data_main
from data_modules.convert.latents import encode_latents, model_config
from data_modules.interleaved import InterleavedDataModule
from data_modules.latents import LatentCacheError, cache_record
from data_modules.shards import expand_shards
from data_modules.stream import POSITION_KEY
from data_modules.synthetic import write_synthetic
from data_modules.writer import write_shards
from minigpt5.builders import build_latent_space
from minigpt5.config import DiffusionConfig, LLMConfig, MiniGPT5Config, VisionConfig
from minigpt5.images import to_target_tensor
from minigpt5.model import MiniGPT5

VAE_CFG = MiniGPT5Config(diffusion=DiffusionConfig(latent_space="vae", resolution=16))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Synthetic caption/image shards (2 x 8 samples, 24 px) and their latent-cached copies."""
    root = tmp_path_factory.mktemp("pairs")
    shards = write_synthetic(root / "raw", num=16, val_num=0, size=24, seed=0, shard_size=8)
    summary = encode_latents(shards.train, root / "cached", VAE_CFG, batch_size=5, device="cpu")
    return shards.train, summary


@pytest.fixture(scope="module")
def vae_model():
    torch.manual_seed(0)
    return MiniGPT5(VAE_CFG)


def read(spec: str) -> list[dict]:
    return [s for url in expand_shards(spec) for s in tarfile_samples([{"url": url}])]


def datamodule(spec: str, cfg: MiniGPT5Config = VAE_CFG, **kwargs) -> CC3MDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "samples_per_epoch": 12, "shuffle_buffer": 4, **kwargs}
    dm = CC3MDataModule(spec, model_config=cfg, **kwargs)
    dm.setup("fit")
    return dm


def batches(dm: CC3MDataModule) -> list[dict]:
    return [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]


def loss_and_grads(model: MiniGPT5, batch: dict, seed: int = 7) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training-mode total loss (CFG dropout on) and the trainable grads, noise from ``seed``."""
    model.train()
    model.zero_grad()
    out = model(batch, generator=torch.Generator().manual_seed(seed))
    total = out.total(model.cfg.loss)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- encode-latents ----

def test_encode_latents_adds_moments_and_keeps_every_member(pairs):
    raw_spec, summary = pairs
    assert (summary.read, summary.written, summary.images) == (16, 16, 16) and not summary.skipped
    raw, cached = read(raw_spec), read(summary.spec)
    assert [s["__key__"] for s in cached] == [s["__key__"] for s in raw]  # order kept, one output per input shard
    vae = build_latent_space(VAE_CFG.diffusion)
    for before, after in zip(raw, cached):
        for field in ("jpg", "txt", "json"):
            assert after[field] == before[field]  # copied byte for byte
        assert set(after) - set(before) == {"latent.npy", "latent.json"}
        assert json.loads(after["latent.json"]) == cache_record(VAE_CFG.diffusion)
        moments = np.load(io.BytesIO(after["latent.npy"]))
        assert moments.dtype == np.float32 and moments.shape == (8, 8, 8)  # (2c, h, w): 16 px / 2
        with Image.open(io.BytesIO(before["jpg"])) as im:
            pixels = to_target_tensor(im.convert("RGB"), 16)[None]
        expected = vae.moments(pixels)[0].detach().numpy()  # encoded alone, not in a batch of 5
        np.testing.assert_allclose(moments, expected, rtol=1e-5, atol=1e-6)


def test_encode_latents_with_workers_writes_the_same_shards(pairs, tmp_path):
    raw_spec, summary = pairs
    parallel = encode_latents(raw_spec, tmp_path / "parallel", VAE_CFG, batch_size=3, num_workers=2, device="cpu")
    assert (parallel.read, parallel.written, parallel.images) == (16, 16, 16)
    assert [Path(p).name for p in parallel.shards] == [Path(p).name for p in summary.shards]
    one, two = read(summary.spec), read(parallel.spec)
    assert [s["__key__"] for s in two] == [s["__key__"] for s in one]  # each shard's order kept
    for a, b in zip(one, two):
        assert {k: v for k, v in a.items() if k != "latent.npy" and not k.startswith("__")} == \
               {k: v for k, v in b.items() if k != "latent.npy" and not k.startswith("__")}
        np.testing.assert_allclose(np.load(io.BytesIO(b["latent.npy"])), np.load(io.BytesIO(a["latent.npy"])),
                                   rtol=1e-5, atol=1e-6)  # encoded in other batches


def test_encode_latents_skips_and_counts_bad_samples(tmp_path, caplog):
    good = io.BytesIO()
    Image.new("RGB", (20, 10), "blue").save(good, format="JPEG")
    samples = [
        {"__key__": "a", "jpg": good.getvalue(), "txt": "a blue square"},
        {"__key__": "b", "jpg": b"not a jpeg", "txt": "broken"},
        {"__key__": "c", "txt": "no image at all"},
    ]
    spec = write_shards(str(tmp_path / "in-%06d.tar"), samples, 10)[0]
    with caplog.at_level(logging.WARNING):
        summary = encode_latents(spec, tmp_path / "out", VAE_CFG, device="cpu")
    assert (summary.read, summary.written) == (3, 1)
    assert dict(summary.skipped) == {"corrupt_image": 1, "no_image": 1}
    assert "sample 'b'" in caplog.text and "sample 'c'" in caplog.text
    assert [s["__key__"] for s in read(summary.spec)] == ["a"]


def test_encode_latents_bar_counts_samples_and_shards_on_a_terminal_only(pairs, tmp_path, monkeypatch):
    raw_spec, _ = pairs
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    encode_latents(raw_spec, tmp_path / "shown", VAE_CFG, device="cpu")
    assert "encode-latents" in terminal.getvalue() and "16sample" in terminal.getvalue()
    assert "shards=2/2" in terminal.getvalue() and "sample/s" in terminal.getvalue()
    terminal.truncate(0)
    encode_latents(raw_spec, tmp_path / "quiet", VAE_CFG, device="cpu", progress=False)
    assert terminal.getvalue() == ""


def test_encode_latents_refuses_pixel_space_and_overwriting_its_input(pairs, tmp_path):
    raw_spec, _ = pairs
    with pytest.raises(ValueError, match="latent_space is 'pixel'"):
        encode_latents(raw_spec, tmp_path / "out", MiniGPT5Config(), device="cpu")
    with pytest.raises(ValueError, match="would overwrite the input shards"):
        encode_latents(raw_spec, expand_shards(raw_spec)[0].rsplit("/", 1)[0], VAE_CFG, device="cpu")


def test_cli_reads_the_training_yaml_and_overrides(pairs, tmp_path, capsys):
    raw_spec, _ = pairs
    yaml_file = tmp_path / "model.yaml"
    yaml_file.write_text("model:\n  config:\n    diffusion:\n      latent_space: vae\n      resolution: 32\n")
    assert model_config([str(yaml_file)], ["diffusion.resolution=16"]).diffusion == VAE_CFG.diffusion
    status = data_main(["encode-latents", "--shards", raw_spec, "--out", str(tmp_path / "out"), "-c", str(yaml_file),
                        "--set", "diffusion.resolution=16", "--batch-size", "7", "--workers", "1", "--device", "cpu"])
    assert status == 0 and "samples 16: written 16" in capsys.readouterr().out
    assert data_main(["encode-latents", "--shards", raw_spec, "--out", str(tmp_path / "o2"), "-c", str(yaml_file),
                      "--set", "diffusion.latent_spac=vae"]) == 2  # a user error
    assert "latent_spac" in capsys.readouterr().err


# ---- the data path ----

def test_cached_shards_give_moments_and_no_pixels(pairs):
    _, summary = pairs
    batch = batches(datamodule(summary.spec, latents="require"))[0]
    assert "target_pixels" not in batch and "target_cached" not in batch
    assert batch["target_latent_moments"].shape == (4, 8, 8, 8) and batch["caption_ids"].shape[0] == 4
    uncached = batches(datamodule(summary.spec, latents="off"))[0]
    assert "target_latent_moments" not in uncached and uncached["target_pixels"].shape == (4, 3, 16, 16)


def test_require_refuses_uncached_shards_and_auto_falls_back(pairs):
    raw_spec, _ = pairs
    with pytest.raises(LatentCacheError, match="no cached latents.*data.latents is 'require'"):
        batches(datamodule(raw_spec, latents="require"))
    assert "target_pixels" in batches(datamodule(raw_spec, latents="auto"))[0]
    with pytest.raises(ValueError, match="data.latents must be one of off, auto, require"):
        CC3MDataModule(raw_spec, latents="always")


@pytest.mark.parametrize(
    "other, named",
    [
        (DiffusionConfig(latent_space="vae", resolution=32), "resolution: cache 16, this run 32"),
        (DiffusionConfig(latent_space="vae", resolution=16, vae_channels=(16, 16)), "latent_space: cache 'tiny-vae"),
        (DiffusionConfig(latent_space="vae", resolution=16, torch_dtype="bfloat16"), "dtype: cache 'float32'"),
    ],
)
def test_cache_made_for_another_vae_or_resolution_is_refused(pairs, other, named):
    _, summary = pairs
    dm = datamodule(summary.spec, MiniGPT5Config(diffusion=other), latents="auto")
    with pytest.raises(LatentCacheError, match="cached for another setup") as err:
        next(iter(dm.train_dataloader()))
    assert named in str(err.value) and "sample '" in str(err.value)


def test_cache_record_names_the_weights_resolution_and_transform():
    record = cache_record(DiffusionConfig(latent_space="vae", resolution=512, path="/models/sd21"))
    assert record == {"latent_space": "vae:/models/sd21", "dtype": "float32", "resolution": 512,
                      "transform": "white-pad-square, bicubic resize, [-1, 1]"}
    assert cache_record(VAE_CFG.diffusion)["latent_space"] == "tiny-vae:channels=[16, 32],layers=1,seed=0"


def test_resumed_stream_of_cached_shards_continues_exactly(pairs):
    _, summary = pairs
    full = batches(datamodule(summary.spec, latents="require"))
    first = datamodule(summary.spec, latents="require")
    iterator = iter(first.train_dataloader())
    first.on_before_batch_transfer(next(iterator), 0)
    resumed = datamodule(summary.spec, latents="require")
    resumed.load_state_dict(first.state_dict())
    rest = [resumed.on_before_batch_transfer(b, 0) for b in resumed.train_dataloader()]
    assert len(rest) == len(full) - 1
    for a, b in zip(rest, full[1:]):
        assert a["captions"] == b["captions"] and torch.equal(a["target_latent_moments"], b["target_latent_moments"])


# ---- same loss, same grads ----

def test_cached_and_on_the_fly_training_give_the_same_loss_and_grads(pairs, vae_model):
    raw_spec, summary = pairs
    on_the_fly = batches(datamodule(raw_spec, latents="off"))
    cached = batches(datamodule(summary.spec, latents="require"))
    assert len(on_the_fly) == len(cached) == 3
    for step, (a, b) in enumerate(zip(on_the_fly, cached)):
        assert a["captions"] == b["captions"]  # the same stream over the copied shards
        loss_a, grads_a = loss_and_grads(vae_model, a, seed=step)
        loss_b, grads_b = loss_and_grads(vae_model, b, seed=step)
        # The cache was encoded in batches of 5 and these in batches of 4: equal up to float rounding.
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)
        assert grads_a.keys() == grads_b.keys() and "mapper.queries" in grads_a
        for name in grads_a:
            # Rounding is relative to the tensor's scale: an element that nearly cancels to zero
            # keeps an absolute error of the size of float32 rounding of the larger terms.
            scale = float(grads_a[name].abs().max())
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5 * scale)
    # Another generator draws other noise: the comparison above is not trivially equal.
    assert not torch.equal(loss_and_grads(vae_model, cached[0], seed=0)[0], loss_and_grads(vae_model, cached[0], seed=1)[0])


def test_same_moments_give_bit_identical_loss_and_a_mixed_batch_the_same_loss(vae_model, caption_batch):
    batch = caption_batch(vae_model, ["a red circle", "a blue square", "a green triangle"], torch.Generator().manual_seed(0))
    moments = vae_model.latents.moments(batch["target_pixels"]).detach()  # (3, 8, 8, 8)
    reference, grads = loss_and_grads(vae_model, batch)
    cached = {k: v for k, v in batch.items() if k != "target_pixels"} | {"target_latent_moments": moments}
    loss, cached_grads = loss_and_grads(vae_model, cached)
    assert torch.equal(loss, reference) and all(torch.equal(cached_grads[n], g) for n, g in grads.items())
    # Targets 0 and 2 cached, 1 encoded now (alone, so equal to the batch-of-3 encoding up to rounding).
    mixed = dict(batch, target_pixels=batch["target_pixels"][[1]], target_latent_moments=moments[[0, 2]],
                 target_cached=torch.tensor([True, False, True]))
    loss, mixed_grads = loss_and_grads(vae_model, mixed)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(mixed_grads[name], grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="target_cached marks 2 of 3 targets, but the batch has 3 cached moments"):
        vae_model(dict(mixed, target_latent_moments=moments))


def test_model_names_moments_that_do_not_fit(vae_model, caption_batch):
    batch = caption_batch(vae_model, ["a red circle"])
    wrong = {k: v for k, v in batch.items() if k != "target_pixels"} | {"target_latent_moments": torch.zeros(1, 8, 4, 4)}
    with pytest.raises(ValueError, match=r"shape \(8, 4, 4\) per image.*needs \(8, 8, 8\)"):
        vae_model(wrong)
    pixel_model = MiniGPT5(MiniGPT5Config())
    with pytest.raises(ValueError, match="latent_space is 'pixel'"):
        pixel_model(dict(caption_batch(pixel_model, ["a red circle"]), target_latent_moments=torch.zeros(1, 8, 8, 8)))


def test_stage2_story_targets_use_cached_latents(tmp_path):
    cfg = MiniGPT5Config(llm=LLMConfig(max_length=128), vision=VisionConfig(kind="clip"),
                         diffusion=DiffusionConfig(latent_space="vae", resolution=16))
    stories = write_synthetic(tmp_path / "raw", num=4, val_num=0, size=24, seed=0, shard_size=4, layout="stories")
    summary = encode_latents(stories.train, tmp_path / "cached", cfg, device="cpu")
    assert summary.images == 12  # 3 steps per story, each image cached
    assert {"0.latent.npy", "1.latent.npy", "2.latent.npy", "latent.json"} <= set(read(summary.spec)[0])

    def first_batch(spec: str, latents: str) -> dict:
        dm = InterleavedDataModule(spec, model_config=cfg, num_workers=0, batch_size=4, samples_per_epoch=4,
                                   shuffle_buffer=1, latents=latents)
        dm.setup("fit")
        return dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)

    on_the_fly, cached = first_batch(stories.train, "off"), first_batch(summary.spec, "require")
    assert "target_pixels" not in cached and cached["target_latent_moments"].shape[0] == on_the_fly["target_pixels"].shape[0]
    assert torch.equal(cached["input_pixels"], on_the_fly["input_pixels"])  # context images still decoded
    torch.manual_seed(0)
    model = MiniGPT5(cfg)
    loss_a, _ = loss_and_grads(model, on_the_fly)
    loss_b, _ = loss_and_grads(model, cached)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)


def test_loader_options_are_checked(pairs):
    raw_spec, _ = pairs
    with pytest.raises(ValueError, match="data.prefetch_factor must be >= 1, got 0"):
        CC3MDataModule(raw_spec, prefetch_factor=0)
    with pytest.raises(ValueError, match="data.worker_start must be one of forkserver, spawn, fork; got 'thread'"):
        CC3MDataModule(raw_spec, worker_start="thread")
    dm = datamodule(raw_spec, num_workers=2, prefetch_factor=3, pin_memory=False, samples_per_epoch=16)
    options = dm.loader_options(2)
    assert options.pop("multiprocessing_context").get_start_method() == "forkserver"  # see data_modules.workers
    assert options == {"pin_memory": False, "prefetch_factor": 3}
    assert dm.loader_options(0) == {"pin_memory": False}  # torch refuses prefetching without workers
    got = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert len(got) == 4 and dm.position.batches == 4 and all(POSITION_KEY not in b for b in got)


def test_persistent_val_workers_read_every_sample_on_each_pass(tmp_path):
    shards = write_synthetic(tmp_path, num=4, val_num=12, size=16, seed=0, shard_size=4)  # 3 val shards
    dm = CC3MDataModule(shards.train, shards.val, batch_size=4, num_workers=2, persistent_val_workers=True)
    dm.setup("fit")
    loader = dm.val_dataloader()
    torch_loader = loader.pipeline[0]  # wds.WebLoader wraps one DataLoader
    assert torch_loader.persistent_workers and torch_loader.prefetch_factor == 2 and torch_loader.num_workers == 2
    passes = [sorted(c for b in loader for c in b["captions"]) for _ in range(2)]
    assert len(passes[0]) == 12 and passes[1] == passes[0]


class RecordLosses(Callback):
    """Keeps every training step's total loss (class-level, read back by the test)."""

    losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        RecordLosses.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_fit_on_cached_shards_gives_the_same_losses_as_on_the_fly(tmp_path, capsys):
    """Through the CLIs: encode-latents (latents and caption embeddings) from the training YAML, then 4 steps
    of `minigpt5 fit` each way: VAE and text encoder in the step, or both caches required."""
    from lit_models.lightning_cli import run_lightning
    from lit_models.module import MiniGPT5Module
    from fit_runs import ROOT, fit_args

    shards = write_synthetic(tmp_path / "raw", num=32, val_num=0, size=24, seed=0, shard_size=16)
    status = data_main(["encode-latents", "--shards", shards.train, "--out", str(tmp_path / "cached"),
                        "-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml"),
                        "--set", "diffusion.latent_space=vae", "--captions"])
    assert status == 0, capsys.readouterr().err
    overlay = tmp_path / "record.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"enable_progress_bar": False, "enable_checkpointing": False,
                                                   "callbacks": [{"class_path": "test_latent_cache.RecordLosses"}]}}))
    losses = {}
    for name, spec, mode in (("on_the_fly", shards.train, "off"), ("cached", str(tmp_path / "cached"), "require")):
        RecordLosses.losses = []
        args = fit_args(type(shards)(train=spec, val=None), tmp_path / name, str(overlay), 4)
        run_lightning(MiniGPT5Module, ["fit"] + args + [
            "--model.config.diffusion.latent_space=vae", "--data.num_workers=0", f"--data.latents={mode}",
            f"--data.caption_embeddings={mode}"])
        losses[name] = RecordLosses.losses
    assert len(losses["cached"]) == len(losses["on_the_fly"]) == 4
    # Equal up to float rounding: the cache was encoded in batches of 32, training batches hold 4.
    torch.testing.assert_close(losses["cached"], losses["on_the_fly"], rtol=1e-5, atol=0)
    assert len(set(losses["cached"])) == 4  # each step drew other samples and noise
