"""The deterministic, resumable training stream: content fixed by seed/epoch/group, exact resume."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from PIL import Image

from data_modules.shards import BadSample, SampleCounter
from data_modules.stream import POSITION_KEY, DataFaultError, EpochLoader, ResumableStream, StreamPosition, buffered_shuffle
from data_modules.writer import write_shards


def write_keyed_shards(folder, num_shards: int = 3, per_shard: int = 10, bad: frozenset = frozenset()) -> list[str]:
    good = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(good, format="JPEG")
    samples = ({"__key__": f"{i:04d}", "jpg": b"broken" if i in bad else good.getvalue(), "txt": f"c{i}"}
               for i in range(num_shards * per_shard))
    return write_shards(str(folder / "%06d.tar"), samples, per_shard)


def encode(sample: dict[str, Any]) -> list[str]:
    """Keep only the key; a 'broken' image is a BadSample, as the real encoder raises."""
    if sample["jpg"] == b"broken":
        raise BadSample(sample, "unreadable image")
    return [sample["__key__"]]


def key_length(key: str) -> int:
    """A made-up token length per key, spread widely (for length grouping)."""
    return 1 + (int(key) * 7) % 23


def stream(urls, *, workers: int = 2, group: int = 0, seed: int = 0, counter=None, pool: int = 1,
           num_batches: int = 4) -> ResumableStream:
    return ResumableStream(urls, encode=encode, collate=lambda keys: {"keys": keys},
                           on_error=counter or SampleCounter(), batch_size=3, num_batches=num_batches,
                           num_streams=max(1, workers), shuffle_buffer=5, seed=seed, groups=[group],
                           pool_batches=pool, length=key_length)


def epoch(dataset: ResumableStream, workers: int, epoch_index: int = 0, resume=None) -> list[dict]:
    def start(ds):
        ds.epoch, ds.resume = epoch_index, resume
    return list(EpochLoader(dataset, workers, start))


def keys(batches) -> list[list[str]]:
    return [b["keys"] for b in batches]


def gathered_position(rank_batches: list[list[dict]], consumed: int) -> StreamPosition:
    """The position a checkpoint gathers after each rank consumed its first ``consumed`` batches."""
    positions = []
    for batches in rank_batches:
        positions.append(StreamPosition())
        for batch in batches[:consumed]:
            positions[-1].advance(batch[POSITION_KEY].tolist())
    for other in positions[1:]:
        positions[0].merge(other)
    return positions[0]


def test_buffered_shuffle_is_a_permutation_fixed_by_the_seed():
    a = list(buffered_shuffle(iter(range(50)), 8, random.Random(1)))
    b = list(buffered_shuffle(iter(range(50)), 8, random.Random(1)))
    assert a == b and sorted(a) == list(range(50)) and a != list(range(50))


def test_epoch_content_is_fixed_by_seed_and_epoch_and_differs_by_group(tmp_path):
    urls = write_keyed_shards(tmp_path)
    first = keys(epoch(stream(urls), 2))
    assert len(first) == 8 and all(len(k) == 3 for k in first)
    assert keys(epoch(stream(urls), 2)) == first
    assert keys(epoch(stream(urls), 2, epoch_index=1)) != first
    assert keys(epoch(stream(urls, group=1), 2)) != first
    assert keys(epoch(stream(urls, seed=5), 2)) != first


@pytest.mark.parametrize("workers, consumed, pool", [(0, 3, 1), (2, 3, 1), (2, 4, 1), (2, 0, 1),
                                                     (0, 1, 2), (0, 2, 2), (0, 3, 3), (2, 3, 2), (2, 5, 3)])
def test_resume_continues_exactly_where_the_consumer_stopped(tmp_path, workers, consumed, pool):
    """Also with length grouping, from inside a pool and at its end (``pool`` batches a pool)."""
    urls = write_keyed_shards(tmp_path, bad=frozenset({2, 7, 13, 21}))
    full = epoch(stream(urls, workers=workers, pool=pool), workers)
    position = StreamPosition()
    for batch in full[:consumed]:
        position.advance(batch[POSITION_KEY].tolist())
    assert position.batches == consumed
    rest = epoch(stream(urls, workers=workers, pool=pool), workers, resume=position)
    assert keys(rest) == keys(full[consumed:])
    assert [b[POSITION_KEY].tolist() for b in rest] == [b[POSITION_KEY].tolist() for b in full[consumed:]]


def test_resume_position_of_another_epoch_is_ignored(tmp_path):
    urls = write_keyed_shards(tmp_path)
    full = epoch(stream(urls), 2, epoch_index=1)
    stale = StreamPosition(epoch=0, batches=5, raw={0: {0: 9, 1: 6}})
    assert keys(epoch(stream(urls), 2, epoch_index=1, resume=stale)) == keys(full)


def test_bad_samples_are_counted_and_skipped(tmp_path):
    urls = write_keyed_shards(tmp_path, num_shards=1, per_shard=12, bad=frozenset({0, 1, 2, 3, 4, 5}))
    counter = SampleCounter()
    batches = epoch(stream(urls, workers=0, counter=counter), 0)
    assert all("0000" not in k and "0005" not in k for b in keys(batches) for k in b)
    assert counter.bad > 0


def test_one_rank_over_two_groups_sees_what_two_ranks_see_together(tmp_path):
    urls = write_keyed_shards(tmp_path, bad=frozenset({2, 7, 13, 21}))

    def grouped(groups, batch_size):
        return ResumableStream(urls, encode=encode, collate=lambda keys: {"keys": keys}, on_error=SampleCounter(),
                               batch_size=batch_size, num_batches=4, num_streams=2, shuffle_buffer=5, seed=0,
                               groups=groups)

    both = keys(epoch(grouped([0, 1], 6), 2))
    rank0, rank1 = keys(epoch(grouped([0], 3), 2)), keys(epoch(grouped([1], 3), 2))
    assert both == [a + b for a, b in zip(rank0, rank1)]
    assert rank0 != rank1

    # Resuming the single process from positions gathered from the two ranks.
    full = epoch(grouped([0, 1], 6), 2)
    position = gathered_position([epoch(grouped([0], 3), 2), epoch(grouped([1], 3), 2)], 3)
    assert keys(epoch(grouped([0, 1], 6), 2, resume=position)) == keys(full[3:])


def test_groups_must_split_the_batch():
    with pytest.raises(ValueError, match="batch_size 3 must split evenly"):
        ResumableStream([], encode=encode, collate=dict, on_error=SampleCounter(), batch_size=3, num_batches=1,
                        num_streams=1, shuffle_buffer=1, seed=0, groups=[0, 1])


def test_epoch_loader_starts_no_workers_until_the_first_batch(tmp_path):
    starts = []
    loader = EpochLoader(stream(write_keyed_shards(tmp_path)), 2, starts.append)
    iterator = iter(loader)  # what Lightning's iterable check does, then throws away
    assert starts == []
    del iterator
    assert len(list(loader)) == 8 and len(starts) == 1


def padded_share(batches: list[list[str]]) -> float:
    """Computed tokens (each batch padded to its longest) per real token."""
    computed = sum(len(b) * max(map(key_length, b)) for b in batches)
    return computed / sum(key_length(k) for b in batches for k in b)


def test_length_pools_hand_out_the_same_samples_in_batches_of_neighbouring_lengths(tmp_path):
    urls = write_keyed_shards(tmp_path, num_shards=4, per_shard=12)
    plain = keys(epoch(stream(urls, workers=0, num_batches=8), 0))
    pooled = keys(epoch(stream(urls, workers=0, num_batches=8, pool=4), 0))
    for start in (0, 4):  # each pool holds the samples the same four batches hold without grouping
        assert sorted(sum(pooled[start:start + 4], [])) == sorted(sum(plain[start:start + 4], []))
        by_length = sorted(pooled[start:start + 4], key=lambda b: min(map(key_length, b)))
        assert all(max(map(key_length, a)) <= min(map(key_length, b)) for a, b in zip(by_length, by_length[1:]))
    assert pooled != plain and all(len(b) == 3 for b in pooled)
    assert padded_share(pooled) < padded_share(plain)


def test_length_pools_keep_what_one_rank_over_two_groups_sees(tmp_path):
    urls = write_keyed_shards(tmp_path, bad=frozenset({2, 7, 13, 21}))

    def grouped(groups, batch_size):
        return ResumableStream(urls, encode=encode, collate=lambda keys: {"keys": keys}, on_error=SampleCounter(),
                               batch_size=batch_size, num_batches=4, num_streams=1, shuffle_buffer=5, seed=0,
                               groups=groups, pool_batches=3, length=key_length)

    both = keys(epoch(grouped([0, 1], 6), 0))
    rank0, rank1 = keys(epoch(grouped([0], 3), 0)), keys(epoch(grouped([1], 3), 0))
    assert both == [a + b for a, b in zip(rank0, rank1)]
    position = gathered_position([epoch(grouped([0], 3), 0), epoch(grouped([1], 3), 0)], 2)
    assert keys(epoch(grouped([0, 1], 6), 0, resume=position)) == both[2:]


def test_length_pools_need_a_length():
    with pytest.raises(ValueError, match="pool_batches must be >= 1"):
        ResumableStream([], encode=encode, collate=dict, on_error=SampleCounter(), batch_size=3, num_batches=1,
                        num_streams=1, shuffle_buffer=1, seed=0, groups=[0], pool_batches=2)


def test_a_stream_of_only_bad_samples_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("data_modules.stream.MAX_BAD_IN_A_ROW", 25)
    urls = write_keyed_shards(tmp_path, num_shards=1, per_shard=10, bad=frozenset(range(10)))
    with pytest.raises(DataFaultError, match="the last 25 training samples read were all bad"):
        epoch(stream(urls, workers=0), 0)
