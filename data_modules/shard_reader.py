"""Reading one tar shard into samples, strictly: a shard cut short says so.

WebDataset's reader groups a tar's members by key (``key.jpg`` + ``key.txt`` -> one sample)
but follows Python's ``tarfile``, which ends quietly at a truncated header: a shard copied
half-way loses its second half without a word. This reader groups members the same way
(key: the member name up to the first dot of its base name; field: the rest, lower-cased;
WebDataset's ``__name__`` metadata members skipped) and raises :class:`ShardError` when the
file stops before tar's end-of-archive blocks or inside a member, after yielding every
sample it read whole. A sample cut by that point is not yielded.
"""

from __future__ import annotations

import re
import tarfile
from typing import Any, Iterator

from webdataset.tariterators import base_plus_ext

_META = re.compile(r"__[^/]*__($|/)")
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks close every tar archive


class ShardError(OSError):
    """A shard that cannot be read to its end (not a tar, truncated, gone)."""


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """The samples of the local tar file ``url``, in order, each ``{"__key__", "__url__", field: bytes}``.

    Raises ShardError (after the samples before the fault) when the file is missing, is not
    a tar archive, is truncated, or repeats a field within a sample.
    """
    try:
        with open(url, "rb") as handle:
            archive = tarfile.open(fileobj=handle, mode="r:")
            sample: dict[str, Any] = {}
            for member in archive:
                key, name = base_plus_ext(member.name)  # as WebDataset splits a member name
                if not member.isreg() or key is None or _META.match(member.name):
                    continue
                name = name.lower()
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                if len(data) != member.size:
                    raise ShardError(f"shard '{url}' ends inside member '{member.name}'")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if name in sample:
                    raise ShardError(f"shard '{url}' holds '{member.name}' twice in one sample")
                sample = sample or {"__key__": key, "__url__": url}
                sample[name] = data
            handle.seek(archive.offset)
            tail = handle.read(END_OF_ARCHIVE)
            if len(tail) < END_OF_ARCHIVE or any(tail):
                cut = f"; its last sample '{sample['__key__']}' may be incomplete and was dropped" if sample else ""
                raise ShardError(f"shard '{url}' is truncated: it stops before tar's end-of-archive blocks{cut}")
            if sample:
                yield sample
    except tarfile.TarError as err:  # not a tar at all, a damaged header, data cut short
        raise ShardError(f"shard '{url}' cannot be read to its end ({type(err).__name__}: {err})") from err
    except FileNotFoundError as err:
        raise ShardError(f"shard '{url}' is gone (it existed when the run started)") from err
