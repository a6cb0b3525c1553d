"""JSON-lines input of the sequence converters: records with their line numbers, bad lines and
repeated sample keys counted and logged (``file:line``), never lost silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from data_modules.convert.common import SequenceSummary, text_lines
from minigpt5.progress import progress_bar

T = TypeVar("T")


def json_lines(
    path: Path, summary: SequenceSummary, log: logging.Logger, progress: bool = False
) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON value) of each non-blank line of ``path``.

    Each such line counts as one sequence read; a line that is not UTF-8 (``bad_text``) or
    not JSON (``bad_json``) is counted, logged as ``path:line`` and skipped. ``progress``: a bar
    of the lines read.
    """
    for lineno, line in progress_bar(text_lines(path), desc=path.name, unit="line", enabled=progress):
        if line is not None and not line.strip():
            continue  # blank line: no record
        summary.read += 1
        where = f"{path}:{lineno}"
        if line is None:
            summary.problem(log, "bad_text", where, "not UTF-8 text")
            summary.skip(log, "bad_text", where, "line not UTF-8 text")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            summary.problem(log, "bad_json", where, f"not valid JSON: {err}")
            summary.skip(log, "bad_json", where, "line not valid JSON")
            continue
        yield lineno, record


def labelled_by(key: str, word: str) -> Callable[[Any], str]:
    """A record's label for the log, ``"<word> <record[key]!r>"``, or "" when it has no ``key``."""
    return lambda record: f"{word} {record[key]!r}" if isinstance(record, dict) and key in record else ""


def json_records(
    path: Path, summary: SequenceSummary, log: logging.Logger, parse: Callable[[Any], T], kind: str,
    label: Optional[Callable[[Any], str]] = None, progress: bool = False,
) -> Iterator[tuple[int, str, T]]:
    """(line number, where, ``parse(value)``) of each JSON line of ``path`` (see :func:`json_lines`).

    ``where`` is ``path:line`` and the record's ``label`` (if given and not empty), for the log. A value that
    ``parse`` rejects with a ValueError is counted as ``kind``, logged with the error and skipped.
    """
    for lineno, record in json_lines(path, summary, log, progress):
        name = label(record) if label is not None else ""
        where = f"{path}:{lineno}: {name}" if name else f"{path}:{lineno}"
        try:
            parsed = parse(record)
        except ValueError as err:
            summary.problem(log, kind, where, str(err))
            summary.skip(log, kind, where, "missing or malformed keys")
            continue
        yield lineno, where, parsed


class SampleKeys:
    """The sample keys taken so far; a key taken before is a duplicate, counted and skipped.

    ``kind`` names the problem and the skip reason (e.g. ``duplicate_id``); ``what`` says what
    repeats, for the log (e.g. ``"id"``). A converter takes a key when it reads the sequence
    (the first line keeps it, usable or not) or only when it writes it (the first usable one).
    """

    def __init__(self, summary: SequenceSummary, log: logging.Logger, kind: str, what: str) -> None:
        self.summary, self.log, self.kind, self.what = summary, log, kind, what
        self.owners: dict[str, str] = {}  # key -> where it was taken ("line 3", "file.jsonl:3")

    def free(self, key: str, where: str) -> bool:
        """Whether ``key`` is not taken yet; if taken, the sequence at ``where`` is counted as a duplicate."""
        if key not in self.owners:
            return True
        self.summary.problem(self.log, self.kind, where, f"key {key!r} already taken by {self.owners[key]}")
        self.summary.skip(self.log, self.kind, where, f"its {self.what} repeats {self.owners[key]}'s")
        return False

    def take(self, key: str, owner: str) -> None:
        self.owners[key] = owner
