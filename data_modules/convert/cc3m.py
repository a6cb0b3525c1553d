"""CC3M tsv (``caption<TAB>image_path`` rows after a header) -> img2dataset-style shards.

Rows whose image is missing or unreadable, and malformed rows (wrong column count,
empty caption or path), are skipped; each is logged with the tsv file and line
number and counted in the returned :class:`ConversionSummary`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from data_modules.convert.common import jpeg_bytes, text_lines
from data_modules.writer import SHARD_NUMBER, brace_spec, write_shards
from minigpt5.progress import progress_bar

log = logging.getLogger(__name__)

HEADER = ["caption", "image_path"]


@dataclass
class ConversionSummary:
    """What a conversion read, wrote and skipped."""

    rows: int = 0  # data rows read (header excluded)
    written: int = 0
    missing: int = 0  # image file not found
    corrupt: int = 0  # image file not readable as an image
    malformed: int = 0  # wrong number of columns, empty caption or image path
    shards: list[str] = field(default_factory=list)  # paths of the written shards
    spec: Optional[str] = None  # their brace spec, for ``--data.train_shards``

    def __str__(self) -> str:
        return (
            f"rows {self.rows}: written {self.written}, missing {self.missing}, corrupt {self.corrupt}, "
            f"malformed {self.malformed}; {len(self.shards)} shards: {self.spec or '(none)'}"
        )


def _samples(
    lines: Iterable[tuple[int, Optional[str]]], tsv: Path, image_root: Path, summary: ConversionSummary
) -> Iterator[dict[str, Any]]:
    """wds samples of the good data rows (``lines`` after the header); counts and logs the others."""
    for lineno, line in lines:
        summary.rows += 1
        if line is None:
            summary.malformed += 1
            log.warning("%s:%d: skipped row that is not UTF-8 text", tsv, lineno)
            continue
        columns = line.rstrip("\r\n").split("\t")
        if len(columns) != 2 or not columns[0].strip() or not columns[1].strip():
            summary.malformed += 1
            log.warning("%s:%d: skipped malformed row (want caption<TAB>image_path): %r", tsv, lineno, line)
            continue
        caption, image_path = columns[0].strip(), columns[1].strip()
        path = image_root / image_path
        if not path.is_file():
            summary.missing += 1
            log.warning("%s:%d: skipped row, image not found: %s", tsv, lineno, path)
            continue
        try:
            image = jpeg_bytes(path)
        except Exception as err:  # PIL signals corrupt data with many exception types
            summary.corrupt += 1
            log.warning(
                "%s:%d: skipped row, corrupt image %s: %s: %s", tsv, lineno, path, err.__class__.__name__, err
            )
            continue
        yield {
            "__key__": f"{summary.written:09d}",
            "jpg": image,
            "txt": caption,
            "json": {"caption": caption, "source": image_path, "row": lineno},
        }
        summary.written += 1


def convert_cc3m(
    tsv: Union[str, Path], out: Union[str, Path], image_root: Optional[Union[str, Path]] = None,
    shard_size: int = 10000, progress: bool = True,
) -> ConversionSummary:
    """Write ``out/%06d.tar`` shards from ``tsv``; images are relative to ``image_root`` (default: the tsv's folder).

    Each sample: key = 9-digit running index, ``jpg``, ``txt`` = caption,
    ``json`` = {caption, source (the tsv's image path), row (its tsv line number)}.
    ``progress``: a bar of the rows read (:func:`~minigpt5.progress.progress_bar`).
    """
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"CC3M tsv not found: {tsv}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ConversionSummary()
    root = Path(image_root) if image_root is not None else tsv.parent
    pattern = str(out / f"{SHARD_NUMBER}.tar")
    lines = text_lines(tsv)  # \r\n is fine: rows are stripped
    header = (next(lines, (1, ""))[1] or "").rstrip("\r\n").split("\t")
    if header != HEADER:
        raise ValueError(f"{tsv}:1: expected the header {'<TAB>'.join(HEADER)!r}, got {header}")
    rows = progress_bar(lines, desc=f"cc3m {tsv.name}", unit="row", enabled=progress)
    summary.shards = write_shards(pattern, _samples(rows, tsv, root, summary), shard_size)
    summary.spec = brace_spec(pattern, len(summary.shards)) if summary.shards else None
    return summary
