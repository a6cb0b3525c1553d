"""MMDialog conversations (JSON lines) + ``<media id>.jpg`` images -> shards, one dialogue per sample.

Input, one JSON object a line, as in MMDialog's ``*_conversations.txt``::

    {"conversation_id": ..., "conversation": [{"turn": [{"__TEXT__": "..."}, {"__MEDIA__": "<media id>"}, ...]}, ...]}

(other keys, such as the negative candidates, are ignored); the image of a media id is
``<images dir>/<media id>.jpg``.

Each sample: ``__key__`` = :func:`safe_key` of the conversation id, ``json`` =
``{"conversation_id", "turns": [{"text", "images": ["0.jpg", ...], "texts", "media", "index"}, ...]}``
where a turn's ``text`` is its ``__TEXT__`` items (stripped, empty ones left out) joined
with a space and its ``images`` are its usable images in the order of its media; the
images are members ``0.jpg``, ``1.jpg``, ... numbered across the dialogue (non-JPEG
images re-encoded as JPEG). So that training can also read a turn as the official code
does (its first text and first image, stopping at the first bad turn; see
:mod:`data_modules.turn_choices`), each turn also keeps ``texts`` (every ``__TEXT__``
item, stripped, empty ones too), ``media`` (per ``__MEDIA__`` item, its member name or
``null`` when the image was missing or corrupt) and ``index`` (its position in the
conversation, counting dropped turns).

Problems, each logged with ``file:line`` and the conversation id and counted by kind in
:attr:`MMDialogSummary.problems`:

- ``bad_json`` (line not JSON) and ``missing_key`` (a required key missing or of the
  wrong type, at any level): the dialogue is skipped;
- ``duplicate_id`` (its key repeats an earlier line's; the first line keeps it): skipped;
- ``missing_image`` / ``corrupt_image``: that image is dropped from its turn;
- ``empty_turn`` (no text and no usable image): the turn is dropped;
- ``too_short`` (fewer than 2 turns left): the dialogue is skipped.

Skipped dialogues are counted by reason in :attr:`MMDialogSummary.skipped`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Union

from data_modules.convert.common import SequenceSummary, check_shard_size, safe_key, write_summary_shards
from data_modules.convert.json_lines import SampleKeys, json_records, labelled_by
from data_modules.convert.sequence_records import ImageMembers, dialogue_turn, long_enough

log = logging.getLogger(__name__)

TEXT, MEDIA = "__TEXT__", "__MEDIA__"


@dataclass
class MMDialogSummary(SequenceSummary):
    """What an MMDialog conversion read, wrote and skipped (``parts`` counts the written turns)."""

    unit: ClassVar[str] = "dialogues"
    part: ClassVar[str] = "turns"


Turn = list[tuple[str, str]]  # (TEXT or MEDIA, value) in the order of the turn's items


def _parse(record: Any) -> tuple[Any, list[Turn]]:
    """(conversation id, turns) of one line's object; raises ValueError naming what is missing."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name in ("conversation_id", "conversation"):
        if name not in record:
            raise ValueError(f"no {name!r} key")
    cid, conversation = record["conversation_id"], record["conversation"]
    if not isinstance(cid, (str, int)) or isinstance(cid, bool):
        raise ValueError(f"conversation_id must be a string or an int, got {cid!r}")
    if not isinstance(conversation, list):
        raise ValueError(f"'conversation' must be a list, got {type(conversation).__name__}")
    turns = []
    for t, turn in enumerate(conversation):
        if not isinstance(turn, dict) or not isinstance(turn.get("turn"), list):
            raise ValueError(f"turn {t}: expected an object with a 'turn' list, got {turn!r}")
        items: Turn = []
        for item in turn["turn"]:
            kinds = [k for k in (TEXT, MEDIA) if isinstance(item, dict) and k in item]
            if len(kinds) != 1 or not isinstance(item[kinds[0]], (str, int)) or isinstance(item[kinds[0]], bool):
                raise ValueError(f"turn {t}: expected {{{TEXT!r}: text}} or {{{MEDIA!r}: id}}, got {item!r}")
            items.append((kinds[0], str(item[kinds[0]])))
        turns.append(items)
    return cid, turns


def _samples(path: Path, images: Path, summary: MMDialogSummary, progress: bool) -> Iterator[dict[str, Any]]:
    """wds samples of the usable dialogues; counts and logs the problems, dropped parts and skipped dialogues."""
    keys = SampleKeys(summary, log, "duplicate_id", "id")
    label = labelled_by("conversation_id", "conversation")
    for lineno, where, (cid, raw_turns) in json_records(path, summary, log, _parse, "missing_key", label,
                                                              progress):
        key = safe_key(cid)
        if not keys.free(key, where):
            continue
        keys.take(key, f"line {lineno}")
        members = ImageMembers()
        turns = []
        for t, items in enumerate(raw_turns):
            media = [
                members.add(images / f"{value}.jpg", summary, log, f"{where} turn {t} media {value!r}",
                            "dropped from its turn")
                for kind, value in items if kind == MEDIA
            ]
            texts = [value.strip() for kind, value in items if kind == TEXT]
            turn = dialogue_turn(texts, media, t, summary, log, f"{where} turn {t}")
            if turn is not None:
                turns.append(turn)
        if long_enough(turns, "turns", summary, log, where):
            yield {"__key__": key, "json": {"conversation_id": cid, "turns": turns}, **members}
            summary.wrote(len(turns), len(members))


def convert_mmdialog(
    dialogues: Union[str, Path], images: Union[str, Path], out: Union[str, Path], shard_size: int = 1000,
    progress: bool = True,
) -> MMDialogSummary:
    """Write ``out/%06d.tar`` shards (``shard_size`` dialogues each) from ``dialogues``; see the module doc.
    ``progress``: a bar of the lines read."""
    dialogues, images = Path(dialogues), Path(images)
    check_shard_size(shard_size)
    if not dialogues.is_file():
        raise FileNotFoundError(f"MMDialog conversations file not found: {dialogues}")
    if not images.is_dir():
        raise FileNotFoundError(f"MMDialog images folder not found: {images}")
    summary = MMDialogSummary()
    return write_summary_shards(Path(out), _samples(dialogues, images, summary, progress), shard_size,
                                summary)
