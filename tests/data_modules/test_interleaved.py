"""Stage-2 data: VIST / MMDialog shards (from the real samples) -> interleaved batches."""

from __future__ import annotations

import io
import json

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.interleaved import InterleavedDataModule
from data_modules.synthetic import colour_of, dominant_colour, dominant_shape, write_synthetic
from data_modules.turn_choices import TurnChoices
from minigpt5.config import ConfigError, LLMConfig, MiniGPT5Config, VisionConfig
from minigpt5.losses import IGNORE_INDEX
from minigpt5.model import MiniGPT5

CFG = MiniGPT5Config(llm=LLMConfig(max_length=256), vision=VisionConfig(kind="clip"))
TOKENS_PER_IMAGE = 5  # tiny CLIP tower: (32 / 16)^2 patches + class token


@pytest.fixture
def mmdialog_shards(samples_dir, tmp_path):
    mm = samples_dir / "MMDialog" / "test"
    return convert_mmdialog(mm / "test_conversations.txt", mm, tmp_path / "mm").spec


def batches(spec, cfg=CFG, **kwargs):
    dm = InterleavedDataModule(spec, spec, model_config=cfg, num_workers=0, batch_size=64, **kwargs)
    dm.setup("fit")
    return dm, list(dm.val_dataloader())


def test_vist_every_step_is_a_target_with_earlier_steps_as_context(vist_shards):
    dm, (batch,) = batches(vist_shards, targets="all")
    ids, labels = batch["input_ids"], batch["labels"]
    enc = dm.encoder
    assert ids.shape[0] == 4  # steps 2..5 of the one 5-step story
    for row, n_context in zip(range(4), range(1, 5)):
        assert int((ids[row] == enc.image_token_id).sum()) == n_context * TOKENS_PER_IMAGE
        assert int((ids[row] == enc.voken_ids[0]).sum()) == 1  # one target image
        # text loss only on the target: nothing labelled before the last image placeholder
        last_image = (ids[row] == enc.image_token_id).nonzero().max()
        assert (labels[row, : last_image + 1] == IGNORE_INDEX).all()
        assert (labels[row, last_image + 1 :] != IGNORE_INDEX).sum() > 2
    assert batch["input_pixels"].shape == (1 + 2 + 3 + 4, 3, 32, 32)
    assert batch["target_pixels"].shape == (4, 3, 16, 16)
    assert dm.counter.bad == 0 and dm.counter.skipped == 0


def test_vist_last_step_text_only_context(vist_shards):
    dm, (batch,) = batches(vist_shards, targets="last", context="text")
    assert batch["input_ids"].shape[0] == 1 and "input_pixels" not in batch
    assert not (batch["input_ids"] == dm.encoder.image_token_id).any()


def test_long_context_is_truncated_oldest_first_and_images_follow(vist_shards):
    short = MiniGPT5Config(llm=LLMConfig(max_length=100), vision=VisionConfig(kind="clip"))
    dm, (batch,) = batches(vist_shards, cfg=short, targets="last")
    ids = batch["input_ids"][0]
    kept_images = int((ids == dm.encoder.image_token_id).sum()) // TOKENS_PER_IMAGE
    assert 0 < kept_images < 4 and batch["input_pixels"].shape[0] == kept_images
    assert dm.counter.truncated == 1
    assert int((ids == dm.encoder.voken_ids[0]).sum()) == 1  # the target survived whole


def test_mmdialog_responses_with_and_without_images(mmdialog_shards):
    dm, (batch,) = batches(mmdialog_shards, targets="all", choices=TurnChoices(speakers="both"))
    ids = batch["input_ids"]
    assert ids.shape[0] == 8  # turns 2..9 of the 9-turn dialogue are responses
    per_row_targets = (ids == dm.encoder.voken_ids[0]).sum(1).tolist()
    assert per_row_targets == [1, 1, 1, 0, 0, 0, 0, 0]  # turns 2-4 carry an image, 5-9 text only
    assert batch["target_pixels"].shape[0] == 3
    dm, (batch,) = batches(mmdialog_shards, targets="all")  # the assistant's turns alone: 2, 4, 6, 8
    assert (batch["input_ids"] == dm.encoder.voken_ids[0]).sum(1).tolist() == [1, 1, 0, 0]
    assert batch["target_pixels"].shape[0] == 2


def test_batch_trains_the_model(vist_shards):
    torch.manual_seed(0)
    model = MiniGPT5(CFG)
    _, (batch,) = batches(vist_shards, targets="all")
    out = model(batch)
    assert torch.isfinite(out.text) and torch.isfinite(out.ldm)
    out.total(CFG.loss).backward()
    assert model.input_projection.weight.grad is not None and model.input_projection.weight.grad.abs().sum() > 0


def test_synthetic_stories_read_as_vist_and_show_their_rules(tmp_path):
    shards = write_synthetic(tmp_path, num=6, val_num=0, size=32, seed=1, shard_size=3, layout="stories")
    dm, batches_ = batches(shards.train, targets="all")
    assert sum(b["input_ids"].shape[0] for b in batches_) == 6 * 2  # steps 2 and 3 of each story
    for sample in wds.WebDataset(shards.train, shardshuffle=False, empty_check=False):
        steps = json.loads(sample["json"])["steps"]
        assert [s["text"].split()[0] for s in steps] == ["first", "then", "finally"]
        for step in steps:
            image = Image.open(io.BytesIO(sample[step["image"]]))
            assert (dominant_colour(image), dominant_shape(image)) == (step["colour"], step["shape"])
            assert step["shape"] in step["text"]


def computed_per_real_token(batches_: list[dict]) -> float:
    """LLM positions computed (each batch padded to its longest) per real token."""
    return sum(b["attention_mask"].numel() for b in batches_) / sum(int(b["attention_mask"].sum()) for b in batches_)


def test_length_grouping_cuts_padding_and_resumes_exactly(vist_shards, mmdialog_shards):
    spec = f"{vist_shards},{mmdialog_shards}"

    def module(grouping: int) -> InterleavedDataModule:
        dm = InterleavedDataModule(spec, model_config=CFG, num_workers=0, batch_size=4, samples_per_epoch=48,
                                   shuffle_buffer=20, length_grouping=grouping)
        dm.setup("fit")
        return dm

    plain, grouped = list(module(1).train_dataloader()), list(module(6).train_dataloader())
    assert len(plain) == len(grouped) == 12
    assert computed_per_real_token(grouped) < computed_per_real_token(plain)

    first = module(6)
    for batch in grouped[:4]:  # stop inside the first pool
        first.on_before_batch_transfer(dict(batch), 0)
    resumed = module(6)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed.train_dataloader())
    assert [b["input_ids"].tolist() for b in rest] == [b["input_ids"].tolist() for b in grouped[4:]]
    with pytest.raises(ConfigError, match=r"data.length_grouping\): 6 -> 1"):
        module(1).load_state_dict(first.state_dict())
