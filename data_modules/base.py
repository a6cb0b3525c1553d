"""The shared LightningDataModule over WebDataset shards: streams, resumption, validation."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict
from typing import Any, Optional, Union

import torch
import webdataset as wds
from lightning import LightningDataModule

from data_modules.cache_records import CACHE_MODES, CacheMode
from data_modules.shards import (
    SampleCounter, SampleEncoder, ShardSpec, batches_per_worker, eval_pipeline, example_length, expand_shards,
)
from data_modules.stream import FAULTS_KEY, POSITION_KEY, DataFaults, EpochLoader, ResumableStream, StreamPosition
from data_modules.workers import START_METHODS, worker_context
from minigpt5.config import ConfigError, MiniGPT5Config

log = logging.getLogger(__name__)

POOL_SHAPE_KEY = "batches per length-sorted pool (data.length_grouping)"


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

    ``latents``: cached VAE latents in the shards (:mod:`data_modules.latents`) are used
    where present ("auto"), required of every sample ("require") or ignored ("off").
    ``caption_embeddings``: the same for cached CAP targets (:mod:`data_modules.caption_cache`),
    which only image-caption pairs (stage 1) read.

    Loading: ``num_workers`` processes decode in parallel, each keeping ``prefetch_factor``
    batches ready; ``pin_memory`` (default: when CUDA is available) lets the host-to-GPU
    copy run asynchronously. Training workers are not persistent: each epoch's stream is a
    function of the epoch and resume position, which workers receive when they start, and
    an epoch (``samples_per_epoch``) is long enough that restarting them is negligible.
    Validation workers persist between validation runs when ``persistent_val_workers``.
    """

    def __init__(
        self,
        train_shards: ShardSpec,
        val_shards: Optional[ShardSpec] = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int = 10000,
        val_samples: Optional[int] = None,
        seed: int = 0,
        stream_groups: Optional[int] = None,
        model_config: Optional[MiniGPT5Config] = None,
        latents: CacheMode = "auto",
        caption_embeddings: CacheMode = "auto",
        prefetch_factor: int = 2,
        pin_memory: Optional[bool] = None,
        persistent_val_workers: bool = False,
        worker_start: str = "forkserver",
        max_bad_share: float = 0.1,
        length_grouping: int = 1,
    ) -> None:
        """``stream_groups``: independent training streams, split evenly over ranks (None: one
        per rank). Runs with the same value and global batch see the same samples per step at
        any world size that divides it, and resume across such world sizes; it must divide
        ``batch_size`` per rank. ``model_config`` is linked from ``model.config`` by the CLI;
        None means the tiny default. ``worker_start``: how DataLoader workers start
        (:mod:`data_modules.workers`; "fork" only for a script that cannot be re-imported,
        such as a notebook, at the risk that explains the default). ``max_bad_share``: training
        stops with DataFaultError once more than this share of the samples read were bad
        (checked from 50 samples on); shards cut short are skipped, logged and counted.
        ``length_grouping``: training batches are cut from pools of this many batches' worth
        of examples sorted by token length, so that little of each batch is padding (1: off;
        :mod:`data_modules.stream`). Resuming needs the saved value."""
        super().__init__()
        if (batch_size < 1 or samples_per_epoch < 1 or num_workers < 0 or (val_samples is not None and val_samples < 1)
                or (stream_groups is not None and stream_groups < 1)):
            raise ValueError(
                "need batch_size >= 1, samples_per_epoch >= 1, num_workers >= 0, val_samples >= 1 or None and "
                f"stream_groups >= 1 or None; got {batch_size}, {samples_per_epoch}, {num_workers}, {val_samples}, "
                f"{stream_groups}"
            )
        for name, mode in (("latents", latents), ("caption_embeddings", caption_embeddings)):
            if mode not in CACHE_MODES:
                raise ValueError(f"data.{name} must be one of {', '.join(CACHE_MODES)}; got {mode!r}")
        if length_grouping < 1:
            raise ValueError(f"data.length_grouping must be >= 1 (1: off), got {length_grouping}")
        if prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1, got {prefetch_factor}")
        if not 0 <= max_bad_share <= 1:
            raise ValueError(f"data.max_bad_share must be in [0, 1], got {max_bad_share}")
        if worker_start not in START_METHODS:
            raise ValueError(f"data.worker_start must be one of {', '.join(START_METHODS)}; got {worker_start!r}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.seed = seed
        self.stream_groups = stream_groups
        self.model_config = model_config or MiniGPT5Config()
        self.latents = latents
        self.caption_embeddings = caption_embeddings
        self.prefetch_factor = prefetch_factor
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_val_workers = persistent_val_workers
        self.worker_start = worker_start
        self.max_bad_share = max_bad_share
        self.length_grouping = length_grouping
        self.faults = DataFaults()  # this rank's, since this run started
        self.faults_before = DataFaults()  # every rank's, before this run resumed
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
        if self.num_workers > 0:  # start the workers' server while the trainer sets up
            worker_context(self.worker_start, type(self.encoder).__module__)

    def make_encoder(self) -> SampleEncoder:
        """The sample -> examples encoder (with ``collate``) of this data set."""
        raise NotImplementedError

    def make_val_encoder(self) -> SampleEncoder:
        """The encoder of validation examples: the training one, unless training examples are drawn differently."""
        assert self.encoder is not None  # setup() built it
        return self.encoder

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _groups(self) -> tuple[int, list[int]]:
        """(number of stream groups, the groups this rank reads)."""
        rank, world_size = self._rank_and_world()
        total = self.stream_groups or world_size
        if total % world_size or self.batch_size % (total // world_size):
            raise ValueError(
                f"data.stream_groups={total} must be a multiple of the world size {world_size}, and "
                f"data.batch_size={self.batch_size} a multiple of the groups per rank ({total}/{world_size})"
            )
        per_rank = total // world_size
        return total, list(range(rank * per_rank, (rank + 1) * per_rank))

    def train_dataloader(self) -> EpochLoader:
        if self.encoder is None or not self.train_urls:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        _, world_size = self._rank_and_world()
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
            groups=self._groups()[1],
            pool_batches=self.length_grouping,
            length=example_length,
        )
        return EpochLoader(dataset, self.num_workers, self._start_epoch, **self.loader_options(self.num_workers))

    def loader_options(self, num_workers: int) -> dict[str, Any]:
        """DataLoader options besides ``num_workers`` (prefetching needs workers)."""
        options: dict[str, Any] = {"pin_memory": self.pin_memory}
        if num_workers > 0:
            options["prefetch_factor"] = self.prefetch_factor
            options["multiprocessing_context"] = worker_context(self.worker_start, type(self.encoder).__module__)
        return options

    def _start_epoch(self, dataset: ResumableStream) -> None:
        """Called as each epoch's iteration starts: set the epoch and any resume position."""
        dataset.epoch = self.trainer.current_epoch if self.trainer is not None else 0
        dataset.resume = self.position

    # ---- exact resumption: the position of the last consumed batch goes into checkpoints ----

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        position = batch.pop(POSITION_KEY, None)
        if position is not None:
            self.position.advance(position.tolist())
        faults = batch.pop(FAULTS_KEY, None)
        if faults is not None:
            self.faults = self.faults.add(DataFaults(*faults.tolist()))
            self.faults_before.add(self.faults).check(self.max_bad_share)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The stream position of every group. Each rank knows only its own groups, and
        Lightning writes rank 0's copy, so the ranks gather theirs (a collective: Lightning
        builds the checkpoint on every rank)."""
        _, world_size = self._rank_and_world()
        position = copy.deepcopy(self.position)
        faults = self.faults_before.add(self.faults)
        if world_size > 1:
            states: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(states, (self.position, self.faults))
            faults = self.faults_before
            for other, other_faults in states:
                position.merge(other)
                faults = faults.add(other_faults)
        level = logging.WARNING if faults.bad_samples or faults.bad_shards else logging.INFO  # warn of a fault
        log.log(level, "training data so far: %d samples read, %d bad ones skipped, %d shards cut short",
                faults.read, faults.bad_samples, faults.bad_shards)
        return {"stream_position": asdict(position), "stream_groups": self._groups()[0], "data_faults": asdict(faults),
                "stream_shape": self._stream_shape()}

    def _stream_shape(self) -> dict[str, int]:
        """What the saved stream position means only under: exact resumption needs these unchanged."""
        _, world_size = self._rank_and_world()
        return {"global batch (data.batch_size x world size)": self.batch_size * world_size,
                "logical streams per rank (data.num_workers, at least 1)": max(1, self.num_workers),
                POOL_SHAPE_KEY: self.length_grouping}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = self._groups()[0]
        # A checkpoint saved before length grouping existed streamed without it.
        saved_shape = {POOL_SHAPE_KEY: 1, **state_dict.get("stream_shape", {})}
        shape = self._stream_shape()
        changed = [f"{key}: {saved_shape[key]} -> {shape[key]}" for key in shape
                   if key in saved_shape and saved_shape[key] != shape[key]]
        if changed:
            raise ConfigError(
                "the checkpoint's data stream position holds only for the same " + "; ".join(changed) + ". Resume "
                "with the saved values, or start a new run from the weights with --model.init_from=<checkpoint>"
            )
        if state_dict["stream_groups"] != groups:
            raise ValueError(
                f"the checkpoint's data stream has {state_dict['stream_groups']} stream groups but this run has "
                f"{groups} (data.stream_groups, or the world size when unset): exact resumption needs the same "
                f"number; set --data.stream_groups={state_dict['stream_groups']} (a multiple of the world size) "
                "or start a new run from the weights with --model.init_from=<checkpoint>"
            )
        self.faults_before, self.faults = DataFaults(**state_dict.get("data_faults", {})), DataFaults()
        saved = state_dict["stream_position"]
        raw = {int(g): {int(k): v for k, v in streams.items()} for g, streams in saved["raw"].items()}
        self.position = StreamPosition(saved["epoch"], saved["batches"], raw)

    def val_dataloader(self) -> Union[wds.WebLoader, list]:
        if not self.val_urls:
            return []  # Lightning then runs no validation
        assert self.encoder is not None  # setup() filled val_urls and built it
        encoder = self.make_val_encoder()
        rank, world_size = self._rank_and_world()
        if len(self.val_urls) < world_size:
            raise ValueError(
                f"{len(self.val_urls)} val shards for {world_size} ranks: write at least one val shard per rank"
            )
        num_workers = min(self.num_workers, len(self.val_urls[rank::world_size]))
        max_samples = None
        if self.val_samples is not None:
            max_samples = math.ceil(self.val_samples / (world_size * max(1, num_workers)))
        dataset = eval_pipeline(self.val_urls, encoder, batch_size=self.batch_size, max_samples=max_samples)
        persistent = self.persistent_val_workers and num_workers > 0
        return wds.WebLoader(
            dataset, batch_size=None, num_workers=num_workers, persistent_workers=persistent,
            **self.loader_options(num_workers),
        )
