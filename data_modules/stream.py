"""A deterministic, resumable training stream over shards.

The data is ``G`` independent *stream groups* (``G`` = the world size unless set); each
rank reads ``G / world_size`` of them and builds every batch from an equal share of each.
Because a group's content does not depend on which rank reads it, runs with the same
``G`` and global batch see the same samples at each step whatever their world size (one
process with batch 4 over groups 0 and 1 = two ranks with batch 2, one group each).

Each rank runs ``W = max(1, num_workers)`` logical streams per group. Logical stream
``L`` of group ``g`` draws shards with replacement and shuffles samples with generators
seeded by (seed, epoch, g, L), so its content is a pure function of those four numbers.
The DataLoader hands out batches round-robin over workers, so global batch ``j`` of an
epoch is batch ``j // W`` of logical stream ``j % W`` of each group.

Every batch carries its position (:data:`POSITION_KEY`): epoch, global batch index,
logical stream and, per group, the raw samples that stream has read. After a restart
the data module passes back the position of the last batch the training loop consumed;
worker ``w`` then plays logical stream ``(w + k) % W`` (``k`` batches consumed), skips
the raw samples that stream already read (before decoding) and carries on, so batch
``k`` is the next one delivered, exactly as in an uninterrupted run.

Length grouping (``pool_batches`` = P > 1): each logical stream reads P batches' worth of
examples per group at a time (a *pool*), sorts them by length, cuts them into P batches of
neighbouring lengths and hands those out in an order drawn from (seed, epoch, stream, pool
index), the same order in every group, so a batch pads to a length close to its examples'
own. A batch's position then records the raw samples read before its pool began while the
pool has batches left; a restart re-reads that pool and skips the batches already consumed
(``k // W`` batches of the stream make whole pools and a remainder), so resumption and the
same-samples-at-any-world-size property hold as without grouping, which is P = 1.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_modules.shard_reader import ShardError, read_shard

log = logging.getLogger(__name__)

POSITION_KEY = "__stream_position__"
FAULTS_KEY = "__stream_faults__"  # per batch: raw samples read for it, of which bad, and shards cut short
MAX_BAD_IN_A_ROW = 1000  # bad samples in a row that stop a stream: with them the batch check never runs


class DataFaultError(RuntimeError):
    """The training data fails too often to train on (broken data, not a few bad samples)."""


@dataclass
class DataFaults:
    """Raw samples read, bad samples skipped and shards cut short (unreadable, truncated, vanished)."""

    read: int = 0
    bad_samples: int = 0
    bad_shards: int = 0

    def add(self, other: "DataFaults") -> "DataFaults":
        return DataFaults(self.read + other.read, self.bad_samples + other.bad_samples,
                          self.bad_shards + other.bad_shards)

    def check(self, max_bad_share: float, min_read: int = 50) -> None:
        """DataFaultError once at least ``min_read`` samples were read and more than
        ``max_bad_share`` of them were bad."""
        if self.read >= min_read and self.bad_samples > max_bad_share * self.read:
            raise DataFaultError(
                f"{self.bad_samples} of {self.read} training samples were bad ({self.bad_samples / self.read:.0%}), "
                f"more than data.max_bad_share={max_bad_share:g}; {self.bad_shards} shards were cut short. The "
                "warnings above name each sample and shard: fix the data, or raise data.max_bad_share"
            )


@dataclass
class StreamPosition:
    """How far one epoch of the stream groups has been consumed."""

    epoch: int = 0
    batches: int = 0  # global batches consumed this epoch
    raw: dict[int, dict[int, int]] = field(default_factory=dict)  # group -> logical stream -> raw samples read

    def advance(self, position: Sequence[int]) -> None:
        """Record that the batch whose :data:`POSITION_KEY` is ``position`` was consumed:
        (epoch, global batch index, logical stream, then group and raw count per group)."""
        epoch, batch_index, stream, *per_group = (int(v) for v in position)
        if epoch != self.epoch:
            self.epoch, self.raw = epoch, {}
        self.batches = batch_index + 1
        for group, raw in zip(per_group[::2], per_group[1::2]):
            self.raw.setdefault(group, {})[stream] = raw

    def merge(self, other: "StreamPosition") -> None:
        """Take the groups ``other`` (another rank's position at the same step) has read."""
        if (other.epoch, other.batches) != (self.epoch, self.batches):
            raise ValueError(f"ranks disagree on the stream position: {self} vs {other}")
        for group, streams in other.raw.items():
            self.raw.setdefault(group, {}).update(streams)


def buffered_shuffle(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle with a buffer of ``size`` samples using ``rng`` (deterministic given its seed)."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


class ResumableStream(IterableDataset):
    """The stream groups ``groups`` of one rank -> ``num_batches`` batches per logical stream and epoch.

    ``encode`` turns a raw sample into a list of model inputs or raises; ``on_error(exc)``
    returns True to skip the sample (it counts and logs) or re-raises. ``collate`` builds
    batches of at least ``batch_size`` inputs, ``batch_size / len(groups)`` from each
    group in order (without length grouping a sample's inputs are never split).
    ``pool_batches`` > 1 groups inputs of similar ``length`` into batches (module docstring).
    """

    def __init__(
        self,
        urls: list[str],
        *,
        encode: Callable[[dict[str, Any]], list[Any]],
        collate: Callable[[list[Any]], dict[str, Any]],
        on_error: Callable[[Exception], bool],
        batch_size: int,
        num_batches: int,
        num_streams: int,
        shuffle_buffer: int,
        seed: int,
        groups: Sequence[int],
        pool_batches: int = 1,
        length: Optional[Callable[[Any], int]] = None,
    ) -> None:
        super().__init__()
        if not groups or batch_size % len(groups):
            raise ValueError(f"batch_size {batch_size} must split evenly over the rank's stream groups {list(groups)}")
        if pool_batches < 1 or (pool_batches > 1 and length is None):
            raise ValueError(f"pool_batches must be >= 1 (and > 1 needs a length function); got {pool_batches}")
        self.urls = urls
        self.encode, self.collate, self.on_error = encode, collate, on_error
        self.batch_size, self.num_batches, self.num_streams = batch_size, num_batches, num_streams
        self.shuffle_buffer, self.seed, self.groups = shuffle_buffer, seed, list(groups)
        self.pool_batches, self.length = pool_batches, length
        self.epoch = 0
        self.resume: Optional[StreamPosition] = None

    def _rng(self, group: int, stream: int, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{group}/{stream}/{purpose}")

    def raw_samples(self, group: int, stream: int, faults: DataFaults) -> Iterator[dict[str, Any]]:
        """The shuffled, undecoded samples of one logical stream of a group (endless). A shard
        that cannot be read to its end (truncated, gone; :mod:`data_modules.shard_reader`)
        gives the samples before the fault, is logged and counted in ``faults``, and the
        stream goes on with its next draw; when ``2 * len(urls)`` draws in a row give no
        sample, DataFaultError."""
        shard_rng = self._rng(group, stream, "shards")

        def samples() -> Iterator[dict[str, Any]]:
            empty_in_a_row, last = 0, "none"
            while True:
                url = shard_rng.choice(self.urls)
                read = 0
                try:
                    for sample in read_shard(url):
                        read += 1
                        yield sample
                except ShardError as err:
                    faults.bad_shards += 1
                    log.warning("skipped the rest of a shard (%d so far in stream %d of group %d): %s",
                                faults.bad_shards, stream, group, err)
                    last = str(err)
                empty_in_a_row = 0 if read else empty_in_a_row + 1
                if empty_in_a_row >= 2 * len(self.urls):
                    raise DataFaultError(f"the last {empty_in_a_row} shards drawn gave no sample (the last error: {last}); "
                                         "are the shards still there?")

        return buffered_shuffle(samples(), self.shuffle_buffer, self._rng(group, stream, "shuffle"))

    def _pool_order(self, stream: int, pool: int) -> list[int]:
        """The order in which a pool's batches are handed out (the same in every group)."""
        order = list(range(self.pool_batches))
        random.Random(f"{self.seed}/{self.epoch}/{stream}/{pool}/order").shuffle(order)
        return order

    def _split_pool(self, inputs: list[Any]) -> list[list[Any]]:
        """``inputs`` -> ``pool_batches`` lists of neighbouring lengths (sizes differ by at most one)."""
        if self.pool_batches == 1:
            return [inputs]
        assert self.length is not None
        ranked = sorted(inputs, key=self.length)  # stable: ties keep the stream's order
        size, extra = divmod(len(ranked), self.pool_batches)
        cuts = [j * size + min(j, extra) for j in range(self.pool_batches + 1)]
        return [ranked[a:b] for a, b in zip(cuts, cuts[1:])]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        done = self.resume.batches if self.resume is not None and self.resume.epoch == self.epoch else 0
        stream = (worker + done) % self.num_streams
        # Batches of this logical stream already consumed: global indices j < done with j % W == stream.
        produced = max(0, -(-(done - stream) // self.num_streams))
        # Raw samples read before the pool holding batch ``produced`` (all of them when pools are single batches).
        raw_read = {g: self.resume.raw.get(g, {}).get(stream, 0) if done else 0 for g in self.groups}
        faults = DataFaults()  # since the last batch
        samples = {g: self.raw_samples(g, stream, faults) for g in self.groups}
        for g in self.groups:
            for _ in range(raw_read[g]):
                next(samples[g])
        faults.bad_shards = 0  # what the resume skip re-read was counted before the restart
        share = self.batch_size // len(self.groups)
        pool_start, pending = dict(raw_read), {}  # pending: batch slot -> its inputs, per group
        for i in range(produced, self.num_batches):
            pool, slot = divmod(i, self.pool_batches)
            if slot == 0 or not pending:  # a new pool, or the resumed one re-read
                pool_start = dict(raw_read)
                pending = {g: self._split_pool(self._read_inputs(samples[g], g, share * self.pool_batches, raw_read,
                                                                 faults)) for g in self.groups}
                if slot:  # resumed inside this pool: its faults were counted before the restart
                    faults.read = faults.bad_samples = faults.bad_shards = 0
            chosen = self._pool_order(stream, pool)[slot]
            batch = [x for g in self.groups for x in pending[g][chosen]]
            out = self.collate(batch)
            last = slot == self.pool_batches - 1
            position = raw_read if last else pool_start
            per_group = [v for g in self.groups for v in (g, position[g])]
            out[POSITION_KEY] = torch.tensor([self.epoch, i * self.num_streams + stream, stream, *per_group])
            out[FAULTS_KEY] = torch.tensor([faults.read, faults.bad_samples, faults.bad_shards])
            faults.read = faults.bad_samples = faults.bad_shards = 0
            yield out

    def _read_inputs(self, samples: Iterator[dict[str, Any]], group: int, count: int, raw_read: dict[int, int],
                     faults: DataFaults) -> list[Any]:
        """Encoded inputs of the next raw samples of ``group``, at least ``count`` of them (whole samples)."""
        inputs: list[Any] = []
        bad_in_a_row = 0
        while len(inputs) < count:
            sample = next(samples)
            raw_read[group] += 1
            faults.read += 1
            try:
                inputs.extend(self.encode(sample))
                bad_in_a_row = 0
            except Exception as exc:  # on_error logs, counts and skips, or re-raises
                self.on_error(exc)
                faults.bad_samples += 1
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_BAD_IN_A_ROW:  # no batch would ever come, so no batch-level check either
                    raise DataFaultError(
                        f"the last {bad_in_a_row} training samples read were all bad (the last one: {exc}); the "
                        "data cannot fill a batch. The warnings above name each sample"
                    ) from exc
        return inputs


class EpochLoader:
    """Iterable over a :class:`ResumableStream` through a DataLoader, one epoch per ``iter``.

    ``on_epoch(dataset)`` runs before each epoch's workers start (they get a copy of the
    dataset then), to set the epoch and resume position. ``loader_options`` go to the
    DataLoader (e.g. ``prefetch_factor``, ``pin_memory``).
    """

    def __init__(
        self,
        dataset: ResumableStream,
        num_workers: int,
        on_epoch: Callable[[ResumableStream], None],
        **loader_options: Any,
    ) -> None:
        self.dataset, self.num_workers, self.on_epoch = dataset, num_workers, on_epoch
        self.loader_options = loader_options

    def __len__(self) -> int:
        return self.dataset.num_batches * self.dataset.num_streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A generator: workers start at the first batch, not at ``iter``. Lightning calls
        # ``iter`` once just to check a loader that is not a DataLoader is iterable, and
        # throws the iterator away; an eager one would start (and abandon) a worker pool.
        self.on_epoch(self.dataset)
        yield from DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, **self.loader_options)
