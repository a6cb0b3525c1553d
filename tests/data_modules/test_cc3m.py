"""CC3MDataModule end to end on synthetic shards with the tiny default config."""

from __future__ import annotations

import io
import logging
from typing import Optional

import pytest
import torch
from lightning import LightningModule, Trainer
from PIL import Image

from data_modules.cc3m import CC3MDataModule
from data_modules.stream import FAULTS_KEY, POSITION_KEY, DataFaults
from data_modules.synthetic import COLOURS, colour_of, write_synthetic
from data_modules.writer import write_shards
from minigpt5.losses import IGNORE_INDEX

BATCH_KEYS = {"input_ids", "attention_mask", "labels", "target_pixels", "caption_ids", "captions"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 train shards (40 samples), 2 val shards (14 samples), 16 px images."""
    return write_synthetic(tmp_path_factory.mktemp("syn"), num=40, val_num=14, size=16, seed=0, shard_size=10)


def unique_caption_shards(folder, num_shards: int, per_shard: int, bad: Optional[dict[int, bytes]] = None) -> str:
    """Shards of captions ``a red circle <i>``; ``bad`` replaces sample i's image bytes."""
    bad = bad or {}
    good = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(good, format="JPEG")
    samples = (
        {"__key__": f"{i:09d}", "jpg": bad.get(i, good.getvalue()), "txt": f"a red circle {i}"}
        for i in range(num_shards * per_shard)
    )
    write_shards(str(folder / "%06d.tar"), samples, per_shard)
    return str(folder / f"{{000000..{num_shards - 1:06d}}}.tar")


def module(train: str, val=None, **kwargs) -> CC3MDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "samples_per_epoch": 12, "shuffle_buffer": 8, **kwargs}
    dm = CC3MDataModule(train, val, **kwargs)
    dm.setup("fit")
    return dm


def test_train_batches_keys_shapes_and_dtypes(shards):
    dm = module(shards.train)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # 12 samples per epoch / batch 4, one rank, no workers
    cfg = dm.model_config
    for index, batch in enumerate(batches):
        assert set(batch) == BATCH_KEYS | {POSITION_KEY, FAULTS_KEY}
        batch = dm.on_before_batch_transfer(batch, 0)  # the stream position and fault counts are the data module's
        assert set(batch) == BATCH_KEYS and dm.position.batches == index + 1
        B, T = batch["input_ids"].shape
        assert B == 4 and T <= cfg.llm.max_length
        for key in ("input_ids", "attention_mask", "labels"):
            assert batch[key].shape == (B, T) and batch[key].dtype == torch.long
        res = cfg.diffusion.resolution
        assert batch["target_pixels"].shape == (B, 3, res, res) and batch["target_pixels"].dtype == torch.float32
        assert batch["target_pixels"].min() >= -1 and batch["target_pixels"].max() <= 1
        assert batch["caption_ids"].shape == (B, cfg.diffusion.text_max_length)
        assert batch["caption_ids"].dtype == torch.long
        assert len(batch["captions"]) == B and all(colour_of(c) in COLOURS for c in batch["captions"])
    assert dm.counter.bad == 0 and dm.faults == DataFaults(read=12, bad_samples=0, bad_shards=0)


def test_labels_mask_bos_padding_and_forced_vokens(shards):
    dm = module(shards.train)
    batch = next(iter(dm.train_dataloader()))
    voken_ids = dm.encoder.voken_ids
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        assert labels[0] == IGNORE_INDEX and ids[0] == dm.encoder.tokenizer.bos_token_id
        assert (labels[mask == 0] == IGNORE_INDEX).all() and (ids[mask == 0] == dm.encoder.tokenizer.pad_token_id).all()
        start = (ids == voken_ids[0]).nonzero().item()
        assert ids[start : start + len(voken_ids)].tolist() == voken_ids
        assert labels[start] == voken_ids[0]  # the first voken is predicted
        assert (labels[start + 1 : start + len(voken_ids)] == IGNORE_INDEX).all()  # [IMG1]..[IMG7] are not
        assert (labels[1:start] == ids[1:start]).all()  # caption tokens are labelled
        end = int(mask.sum()) - 1
        assert labels[end] == ids[end] == dm.encoder.tokenizer.eos_token_id


def test_batch_is_what_the_model_reads(shards, tiny_model):
    dm = module(shards.train)
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["input_ids"], tiny_model.caption_batch(batch["captions"])["input_ids"])
    tiny_model.train()
    losses = tiny_model(batch).named()
    assert set(losses) == {"text", "ldm", "cap"} and all(torch.isfinite(v) for v in losses.values())


def test_val_reads_every_sample_once(shards):
    dm = module(shards.train, shards.val)
    batches = list(dm.val_dataloader())
    assert [len(b["captions"]) for b in batches] == [4, 4, 4, 2]  # 10 + 4 samples, last batch partial
    assert dm.counter.bad == 0
    capped = module(shards.train, shards.val, val_samples=6)
    assert sum(len(b["captions"]) for b in capped.val_dataloader()) == 6


def test_no_val_shards_gives_no_val_loader(shards):
    assert module(shards.train).val_dataloader() == []


def test_corrupt_sample_is_counted_logged_and_skipped(tmp_path, caplog):
    spec = unique_caption_shards(tmp_path, num_shards=1, per_shard=6, bad={2: b"\xff\xd8 not really a jpeg"})
    dm = module(spec, spec)
    with caplog.at_level(logging.WARNING, logger="data_modules.shards"):
        batches = list(dm.val_dataloader())
    captions = [c for b in batches for c in b["captions"]]
    assert captions == [f"a red circle {i}" for i in (0, 1, 3, 4, 5)]
    assert dm.counter.bad == 1
    assert "000000.tar" in caplog.text and "'000000002'" in caplog.text and "1 so far" in caplog.text
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 4  # training goes on too


def test_missing_shard_is_a_clear_error(shards):
    missing = shards.train.replace("{000000..000003}", "{000000..000005}")
    dm = CC3MDataModule(missing)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    assert "train-000004.tar" in str(err.value) and "train-000005.tar" in str(err.value)
    dm = CC3MDataModule(shards.train, val_shards=shards.val.replace("val-", "nope-"))
    with pytest.raises(FileNotFoundError, match="nope-000000.tar"):
        dm.setup("validate")


def test_two_ranks_see_disjoint_val_shards(tmp_path, monkeypatch):
    spec = unique_caption_shards(tmp_path, num_shards=4, per_shard=3)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # read by wds.split_by_node
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = module(spec, spec)
        seen.append({c for b in dm.val_dataloader() for c in b["captions"]})
    assert seen[0] == {f"a red circle {i}" for i in (0, 1, 2, 6, 7, 8)}  # shards 0 and 2
    assert seen[1] == {f"a red circle {i}" for i in (3, 4, 5, 9, 10, 11)}  # shards 1 and 3


def test_workers_split_train_epoch_and_val_shards(shards):
    dm = module(shards.train, shards.val, num_workers=2, samples_per_epoch=16)
    loader = dm.train_dataloader()
    assert len(list(loader)) == len(loader) == 4  # 2 batches from each of 2 workers
    captions = [c for b in dm.val_dataloader() for c in b["captions"]]
    assert len(captions) == 14  # each val shard read once, one per worker


def test_more_workers_than_val_shards(shards):
    dm = module(shards.train, shards.val.replace("{000000..000001}", "000001"), num_workers=3)
    assert sum(len(b["captions"]) for b in dm.val_dataloader()) == 4


class CountingModule(LightningModule):
    """Counts the batches Lightning feeds it; one parameter so the optimizer has work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_batches = self.val_batches = 0

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        return self.weight * batch["target_pixels"].mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_val", [False, True])
def test_lightning_fit_sizes_epochs(shards, with_val):
    dm = CC3MDataModule(
        shards.train, shards.val if with_val else None, batch_size=4, num_workers=0, samples_per_epoch=12
    )
    model = CountingModule()
    trainer = Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert trainer.estimated_stepping_batches == 6 and model.train_batches == 6
    assert model.val_batches == (8 if with_val else 0)  # 14 val samples = 4 batches, each epoch
