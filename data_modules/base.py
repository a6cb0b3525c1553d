"""The shared LightningDataModule over WebDataset shards: streams, resumption, validation."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Optional, Union

import torch
import webdataset as wds
from lightning import LightningDataModule

from data_modules.shards import SampleCounter, SampleEncoder, batches_per_worker, eval_pipeline, expand_shards
from data_modules.stream import POSITION_KEY, EpochLoader, ResumableStream, StreamPosition
from minigpt5.config import MiniGPT5Config


class ShardDataModule(LightningDataModule):
    """Batches from shards; subclasses say how a sample becomes examples (:meth:`make_encoder`).

    ``batch_size`` is per device (examples per batch; a sample that yields several
    examples is never split, so a batch may hold up to one sample's worth more). Training draws from a deterministic resampled stream
    (:mod:`data_modules.stream`); one epoch is
    ``batches_per_worker(samples_per_epoch, batch_size, world_size, num_workers)`` batches
    from each DataLoader worker, i.e. about ``samples_per_epoch / world_size`` samples per
    rank. The position of the last consumed batch is saved in checkpoints, and a resumed
    run continues the stream exactly where it stopped. Validation reads every val shard once, shards split over ranks and
    then workers (workers capped at the rank's shard count); ``val_samples`` caps the
    samples read in all, split evenly over ranks and workers.

    Bad samples are logged and counted in ``counter`` (per process: with ``num_workers > 0``
    each worker counts its own, see its log lines).
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: Optional[str] = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int = 10000,
        val_samples: Optional[int] = None,
        seed: int = 0,
        model_config: Optional[MiniGPT5Config] = None,
    ) -> None:
        """``model_config`` is linked from ``model.config`` by the CLI; None means the tiny default."""
        super().__init__()
        if batch_size < 1 or samples_per_epoch < 1 or num_workers < 0 or (val_samples is not None and val_samples < 1):
            raise ValueError(
                "need batch_size >= 1, samples_per_epoch >= 1, num_workers >= 0 and val_samples >= 1 or None; "
                f"got {batch_size}, {samples_per_epoch}, {num_workers}, {val_samples}"
            )
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.seed = seed
        self.model_config = model_config or MiniGPT5Config()
        self.counter = SampleCounter()
        self.position = StreamPosition()
        self.encoder: Optional[SampleEncoder] = None
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []

    def setup(self, stage: Optional[str] = None) -> None:
        """Check that the shards of ``stage`` exist, then build the tokenizers."""
        if stage in (None, "fit"):
            self.train_urls = expand_shards(self.train_shards)
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            self.val_urls = expand_shards(self.val_shards)
        if self.encoder is None:
            self.encoder = self.make_encoder()

    def make_encoder(self) -> SampleEncoder:
        """The sample -> examples encoder (with ``collate``) of this data set."""
        raise NotImplementedError

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> EpochLoader:
        if self.encoder is None or not self.train_urls:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        rank, world_size = self._rank_and_world()
        num_batches = batches_per_worker(self.samples_per_epoch, self.batch_size, world_size, self.num_workers)
        dataset = ResumableStream(
            self.train_urls,
            encode=self.encoder,
            collate=self.encoder.collate,
            on_error=self.counter,
            batch_size=self.batch_size,
            num_batches=num_batches,
            num_streams=max(1, self.num_workers),
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            rank=rank,
        )
        return EpochLoader(dataset, self.num_workers, self._start_epoch)

    def _start_epoch(self, dataset: ResumableStream) -> None:
        """Called as each epoch's iteration starts: set the epoch and any resume position."""
        dataset.epoch = self.trainer.current_epoch if self.trainer is not None else 0
        dataset.resume = self.position

    # ---- exact resumption: the position of the last consumed batch goes into checkpoints ----

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        position = batch.pop(POSITION_KEY, None)
        if position is not None:
            self.position.advance(*(int(v) for v in position))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream position (rank order): ranks read different streams, so their
        positions differ (e.g. raw samples read), and Lightning writes rank 0's copy only.

        Lightning builds the checkpoint on every rank, so the gather here is collective.
        """
        _, world_size = self._rank_and_world()
        positions: list[Any] = [asdict(self.position)]
        if world_size > 1:
            positions = [None] * world_size
            torch.distributed.all_gather_object(positions, asdict(self.position))
        return {"stream_positions": positions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        positions = state_dict["stream_positions"]
        rank, world_size = self._rank_and_world()
        if len(positions) != world_size:
            raise ValueError(
                f"the checkpoint's data stream positions were saved by {len(positions)} ranks but this run has "
                f"{world_size}: each rank reads its own stream, so exact resumption needs the same number of ranks "
                "(to change it, start a new run from the weights with --model.init_from=<checkpoint>)"
            )
        saved = positions[rank]
        self.position = StreamPosition(saved["epoch"], saved["batches"], {int(k): v for k, v in saved["raw"].items()})

    def val_dataloader(self) -> Union[wds.WebLoader, list]:
        if not self.val_urls:
            return []  # Lightning then runs no validation
        assert self.encoder is not None  # setup() filled val_urls and built it
        rank, world_size = self._rank_and_world()
        if len(self.val_urls) < world_size:
            raise ValueError(
                f"{len(self.val_urls)} val shards for {world_size} ranks: write at least one val shard per rank"
            )
        num_workers = min(self.num_workers, len(self.val_urls[rank::world_size]))
        max_samples = None
        if self.val_samples is not None:
            max_samples = math.ceil(self.val_samples / (world_size * max(1, num_workers)))
        dataset = eval_pipeline(self.val_urls, self.encoder, batch_size=self.batch_size, max_samples=max_samples)
        return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)
