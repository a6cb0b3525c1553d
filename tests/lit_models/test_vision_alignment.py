"""The tiny image-reader stand-in (``minigpt5 pretrain-vision``): pairs become reading examples,
training makes the frozen LM's words depend on the picture, and the export loads into the
stages as ``vision.path`` + a frozen ``vision.projection_path``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from webdataset.tariterators import tarfile_samples

from data_modules.image_reading import ImageReadingDataModule
from data_modules.shards import decode_sample
from data_modules.synthetic import write_synthetic
from lit_models.cli import main
from lit_models.vision_alignment import PROJECTION_FILE, TOWER_DIR, VisionAlignmentModule, caption_words
from minigpt5.config import ConfigError, LLMConfig, MiniGPT5Config, VisionConfig
from minigpt5.model import MiniGPT5
from minigpt5.projection import read_minigpt4_projection

ROOT = Path(__file__).resolve().parents[2]


def reader_config(**vision) -> MiniGPT5Config:
    return MiniGPT5Config(vision=VisionConfig(kind="blip2", **vision), llm=LLMConfig(max_length=32))


def test_a_pair_becomes_its_image_in_and_its_caption_out(tmp_path):
    shards = write_synthetic(tmp_path, num=8, val_num=4, size=16, shard_size=8)
    cfg = reader_config()
    dm = ImageReadingDataModule(shards.train, shards.val, model_config=cfg, num_workers=0, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    tok, image_id = dm.encoder.tokenizer, dm.encoder.image_token_id
    captions = [decode_sample(s)[1] for s in tarfile_samples([{"url": shards.val}])]
    assert batch["input_pixels"].shape == (4, 3, 32, 32)  # one picture per example, at the tower's size
    for row, caption in enumerate(captions):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert int((ids == image_id).sum()) == 4  # the tiny Q-Former's four tokens
        assert tok.decode(labels[labels >= 0], skip_special_tokens=True).strip() == caption  # only it is a target
        assert ((labels >= 0) & (ids == image_id)).sum() == 0


def test_a_reader_needs_a_tower():
    with pytest.raises(ConfigError, match="vision.kind to blip2 or clip"):
        VisionAlignmentModule(MiniGPT5Config())
    dm = ImageReadingDataModule("unused-{000000..000001}.tar", model_config=MiniGPT5Config(), num_workers=0)
    with pytest.raises(ValueError, match="needs a vision tower"):
        dm.make_encoder()


def test_caption_words_marks_each_word_a_caption_holds_once():
    labels = torch.tensor([[-100, 5, 7, 5, -100], [-100, -100, 0, 2, 2]])
    got = caption_words(labels, 10)
    assert got.shape == (2, 10)
    assert torch.nonzero(got[0]).flatten().tolist() == [5, 7]
    assert torch.nonzero(got[1]).flatten().tolist() == [0, 2]  # id 0 is a word like any other
    assert got.max() == 1


def test_the_words_loss_reaches_the_tower_but_not_the_projection(tmp_path):
    shards = write_synthetic(tmp_path, num=8, val_num=4, size=16, shard_size=8)
    cfg = reader_config()
    torch.manual_seed(0)
    module = VisionAlignmentModule(cfg, words_weight=1.0)
    dm = ImageReadingDataModule(shards.train, shards.val, model_config=cfg, num_workers=0, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    module.words_loss(module.model.read_images(batch["input_pixels"]), batch["labels"]).backward()
    assert module.word_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.vision.parameters())
    assert all(p.grad is None for p in module.model.input_projection.parameters())
    calls = []
    module.model.vision.register_forward_hook(lambda *_: calls.append(1))
    module.training_step(batch, 0)  # the caption loss and the words loss share one read of the pictures
    assert len(calls) == 1
    assert VisionAlignmentModule(cfg, words_weight=0.0).word_head is None
    with pytest.raises(ConfigError, match="words_weight trains the tower"):
        VisionAlignmentModule(cfg, train_tower=False, words_weight=1.0)


def test_only_the_tower_and_projection_train_and_the_export_loads_frozen_in_the_stages(tmp_path):
    torch.manual_seed(0)
    module = VisionAlignmentModule(reader_config())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.vision.", "model.input_projection.", "word_head.")) for n in trainable)
    assert any(n.startswith("model.vision.qformer.") for n in trainable)
    with torch.no_grad():  # stand-in for training: move every trained tensor
        for name, param in module.named_parameters():
            if name in trainable:
                param.add_(torch.randn_like(param) * 0.1)
    module.export(str(tmp_path))
    assert read_minigpt4_projection(str(tmp_path / PROJECTION_FILE))["weight"].shape == (64, 32)

    stage = MiniGPT5(reader_config(path=str(tmp_path / TOWER_DIR), projection_path=str(tmp_path / PROJECTION_FILE),
                                   train_projection=False))
    assert not any(p.requires_grad for p in stage.vision.parameters())
    assert not any(p.requires_grad for p in stage.input_projection.parameters())
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = module.model.input_projection(module.model.vision.eval()(pixels))
        got = stage.input_projection(stage.vision(pixels))
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_pretrain_vision_makes_the_frozen_lm_read_the_picture(tmp_path):
    world = [write_synthetic(tmp_path / layout, num=400, val_num=48, size=16, shard_size=200, layout=layout)
             for layout in ("pairs", "stories", "dialogues")]
    lm = tmp_path / "lm" / "model"
    assert main([
        "pretrain-lm", "fit", "-c", str(ROOT / "configs/tiny_lm.yaml"), "--trainer.max_steps=300",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'lm'}",
        f"--model.export_dir={lm}", f"--data.init_args.train_shards={','.join(w.train for w in world)}",
        f"--data.init_args.val_shards={json.dumps([w.val for w in world])}", "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=4800",
    ]) == 0
    reader = tmp_path / "reader"
    assert main([
        "pretrain-vision", "fit", "-c", str(ROOT / "configs/tiny_vision.yaml"), "--trainer.max_steps=600",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={reader}", f"--model.export_dir={reader}",
        f"--model.config.llm.path={lm}", f"--data.init_args.train_shards={world[0].train}",
        f"--data.init_args.val_shards={world[0].val}", "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=9600",
    ]) == 0
    cfg = reader_config(path=str(reader / TOWER_DIR), projection_path=str(reader / PROJECTION_FILE),
                        train_projection=False)
    cfg.llm.path = str(lm)
    trained = VisionAlignmentModule(cfg).eval()
    dm = ImageReadingDataModule(world[0].train, world[0].val, model_config=cfg, num_workers=0, batch_size=16)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    right, wrong = trained.caption_losses(batches)
    # Held-out captions are likelier under their own picture than under another one: the LM's
    # words now depend on what the picture shows (an image-blind reader scores both alike).
    assert right < wrong - 0.2, (right, wrong)
