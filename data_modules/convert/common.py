"""Helpers shared by the converters: image checks, sample keys, problem counting, shard output."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Optional, Union

from PIL import Image

from data_modules.writer import SHARD_NUMBER, brace_spec, write_shards

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def jpeg_bytes(path: Path) -> bytes:
    """The file's bytes if it is a JPEG, else the image re-encoded as JPEG; raises on a corrupt image."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode fully: a truncated file fails here
        if image.format == "JPEG":
            return data
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()


def safe_key(ident: Any) -> str:
    """A wds sample key for ``ident``: every character but ASCII letters, digits, ``_`` and ``-`` becomes ``_``.

    webdataset splits a member name at its first dot (``KEY.0.jpg`` -> key ``KEY``, field
    ``0.jpg``) and a slash would make a folder, so neither may stay in a key. Different ids
    can map to the same key (``a.b`` and ``a_b``): the converters report that as a duplicate.
    """
    return _UNSAFE_KEY_CHARS.sub("_", str(ident)) or "_"


@dataclass
class SequenceSummary:
    """What a conversion of multi-image sequences (stories, dialogues) read, wrote and skipped.

    ``problems`` counts every problem found, by kind; ``skipped`` counts the sequences left
    out of the shards, by reason (one reason per skipped sequence).
    """

    unit: ClassVar[str] = "sequences"  # what one sample holds, for printing
    part: ClassVar[str] = "parts"  # what a sequence is made of, for printing

    read: int = 0  # sequences read from the input
    written: int = 0  # sequences written as samples
    parts: int = 0  # parts (steps, turns) in the written samples
    images: int = 0  # images in the written samples
    problems: Counter = field(default_factory=Counter)  # problem kind -> times found
    skipped: Counter = field(default_factory=Counter)  # reason -> sequences skipped
    shards: list[str] = field(default_factory=list)  # paths of the written shards
    spec: Optional[str] = None  # their brace spec, for ``--data.train_shards``

    def problem(self, log: logging.Logger, kind: str, where: str, message: str) -> None:
        """Count one problem of ``kind`` and log it as ``where: message``."""
        self.problems[kind] += 1
        log.warning("%s: %s", where, message)

    def skip(self, log: logging.Logger, reason: str, where: str, message: str) -> None:
        """Count one skipped sequence under ``reason`` and log it as ``where: message``."""
        self.skipped[reason] += 1
        log.warning("%s: skipped: %s", where, message)

    def wrote(self, parts: int, images: int) -> None:
        """Count one written sequence of ``parts`` parts and ``images`` images."""
        self.written += 1
        self.parts += parts
        self.images += images

    def more_counts(self) -> str:
        """A subclass's own counts for the printed summary, each ending in "; " (none here)."""
        return ""

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = f" ({_counts(self.skipped)})" if skipped else ""
        problems = _counts(self.problems) if self.problems else "none"
        return (
            f"{self.unit} {self.read}: written {self.written}, skipped {skipped}{reasons}; "
            f"{self.parts} {self.part} and {self.images} images written; problems: {problems}; "
            f"{self.more_counts()}{len(self.shards)} shards: {self.spec or '(none)'}"
        )


def _counts(counter: Counter) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counter.items()))


def read_image(
    path: Path, summary: SequenceSummary, log: logging.Logger, where: str, then: str = ""
) -> Union[bytes, str]:
    """JPEG bytes of ``path`` (see :func:`jpeg_bytes`), or the problem counted: ``missing_image`` / ``corrupt_image``.

    ``then`` (what the caller does about it) is appended to the logged message.
    """
    then = f"; {then}" if then else ""
    if not path.is_file():
        summary.problem(log, "missing_image", where, f"image not found: {path}{then}")
        return "missing_image"
    try:
        return jpeg_bytes(path)
    except Exception as err:  # PIL signals corrupt data with many exception types
        summary.problem(log, "corrupt_image", where, f"corrupt image {path}: {err.__class__.__name__}: {err}{then}")
        return "corrupt_image"


def text_lines(path: Path) -> Iterator[tuple[int, Optional[str]]]:
    """(line number, text) of each line of ``path`` (UTF-8, a leading BOM dropped, newlines
    kept); text is None for a line that is not UTF-8, for the caller to count and skip."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None


def check_shard_size(shard_size: int) -> None:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")


def write_summary_shards(
    out: Path, samples: Iterable[dict[str, Any]], shard_size: int, summary: SequenceSummary
) -> SequenceSummary:
    """Write ``samples`` to ``out/%06d.tar`` and record the shard paths and brace spec in ``summary``."""
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{SHARD_NUMBER}.tar")
    summary.shards = write_shards(pattern, samples, shard_size)
    summary.spec = brace_spec(pattern, len(summary.shards)) if summary.shards else None
    return summary
