"""Writing WebDataset shards (img2dataset layout) for the converters and the synthetic set."""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

import webdataset as wds

SHARD_NUMBER = "%06d"  # shard index in every writer pattern


def brace_spec(pattern: str, count: int) -> str:
    """The brace spec of shards ``pattern % 0 .. pattern % (count - 1)``."""
    if count == 1:
        return pattern % 0
    head, tail = pattern.split(SHARD_NUMBER)
    return f"{head}{{{0:06d}..{count - 1:06d}}}{tail}"


def write_shards(pattern: str, samples: Iterable[dict[str, Any]], shard_size: int) -> list[str]:
    """Write wds samples to ``pattern % i`` (``pattern`` holds ``%06d``); return the shard paths.

    Writes no file when ``samples`` is empty.
    """
    paths: list[str] = []
    # A whole-second mtime: with webdataset's default (float time.time()) every member gets its
    # own PAX header, which doubles the tar headers a reader parses (measured: 2x slower reads).
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, post=paths.append, mtime=int(time.time())) as sink:
        for sample in samples:
            sink.write(sample)
        written = sink.total
    if written == 0:  # ShardWriter opens its first shard up front
        for path in paths:
            os.remove(path)
        return []
    return paths
