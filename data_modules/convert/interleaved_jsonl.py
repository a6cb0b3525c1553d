"""Your own interleaved data (JSON lines in the schema below) + image files -> shards, one document
per sample, as a story (VIST's layout) or a dialogue (MMDialog's).

Schema, one JSON object a line::

    {"id": "trip-1", "layout": "story",
     "turns": [{"text": "We set off at dawn.", "images": ["trip/dawn.jpg"]},
               {"text": "By noon we reached the lake.", "images": ["trip/lake.png"]}]}

- ``id`` (string or integer, required): names the sample (its key: every character but ASCII
  letters, digits, ``_`` and ``-`` becomes ``_``); a line whose key a line written before has
  is skipped (``duplicate_id``), so the first usable line with a key is kept.
- ``turns`` (list, required), in order; each an object with only these keys:
  ``text`` (string, default ""), ``images`` (list of image file paths, default none: a
  relative path is read from the images root, by default the jsonl file's folder; any format
  PIL reads, stored as JPEG) and ``speaker`` (``"user"`` or ``"assistant"``, optional, read in
  the dialogue layout only).
- ``layout`` (``"story"`` or ``"dialogue"``, optional; default: the converter's ``layout``).
  Other top-level keys are ignored.

Layouts (see :mod:`data_modules.convert.sequence_records` and, for the training tasks each
makes, :mod:`data_modules.turn_choices`):

- ``story``: steps of text then one image, as
  :func:`~data_modules.convert.sequence_records.story_steps` builds them: a turn's text and
  its first image make a step; a text-only turn's text joins the next step; a turn's further
  images, having no text of their own, are dropped (``image_without_text``); text after the
  last image is left out (counted in ``left_out``). Steps keep ``source`` (the path as given)
  and ``turn`` (the turn's position). Tasks: ``data.choices.story_tasks``.
- ``dialogue``: turns of text and any number of images. Training reads a dialogue's speakers
  by position (user first, then alternating), so when any turn has a ``speaker``, every turn
  must, alternating from the user; otherwise the line is skipped (``bad_speakers``: join
  consecutive turns of one speaker). A turn with no text and no usable image is dropped
  (``empty_turn``).

Problems, each logged with ``file:line`` (and the id) and counted by kind: ``bad_text`` /
``bad_json`` / ``bad_schema`` (the line is not UTF-8, not JSON, or does not fit the schema;
the message names the key) and ``duplicate_id`` and ``bad_speakers``: skipped;
``missing_image`` / ``corrupt_image``: that image dropped, the document kept; ``too_short``
(fewer than 2 usable steps or turns): skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

from data_modules.convert.common import check_shard_size, safe_key, write_summary_shards
from data_modules.convert.json_lines import SampleKeys, json_records, labelled_by
from data_modules.convert.sequence_records import (
    DocumentSummary, ImageMembers, StoryImage, dialogue_turn, long_enough, story_steps,
)
from data_modules.turn_choices import ASSISTANT, USER, speaker_at

log = logging.getLogger(__name__)

Layout = Literal["story", "dialogue"]
LAYOUTS = ("story", "dialogue")
TURN_KEYS = ("text", "images", "speaker")


@dataclass
class _Turn:
    text: str
    images: list[str]  # paths as given
    speaker: Optional[str]


def _turn(turn: Any, t: int) -> _Turn:
    if not isinstance(turn, dict):
        raise ValueError(f"turn {t}: expected an object with keys among {list(TURN_KEYS)}, got {turn!r}")
    unknown = sorted(set(turn) - set(TURN_KEYS))
    if unknown:
        raise ValueError(f"turn {t}: unknown key(s) {unknown} (a turn has {', '.join(TURN_KEYS)})")
    text, images, speaker = turn.get("text", ""), turn.get("images", []), turn.get("speaker")
    if not isinstance(text, str):
        raise ValueError(f"turn {t}: 'text' must be a string, got {text!r}")
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise ValueError(f"turn {t}: 'images' must be a list of image paths, got {images!r}")
    if speaker not in (None, USER, ASSISTANT):
        raise ValueError(f"turn {t}: 'speaker' must be {USER!r} or {ASSISTANT!r}, got {speaker!r}")
    return _Turn(text, images, speaker)


def _parse(record: Any, layout: Layout) -> tuple[Any, Layout, list[_Turn]]:
    """(id, layout, turns) of one line's object; raises ValueError naming the key that does not fit."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name in ("id", "turns"):
        if name not in record:
            raise ValueError(f"no {name!r} key")
    ident, turns, layout = record["id"], record["turns"], record.get("layout", layout)
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise ValueError(f"'id' must be a string or an int, got {ident!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(turns, list):
        raise ValueError(f"'turns' must be a list, got {type(turns).__name__}")
    return ident, layout, [_turn(turn, t) for t, turn in enumerate(turns)]


def _speaker_problem(turns: list[_Turn]) -> str:
    """Why the turns' speakers do not read as training reads them (by position, user first), or ""."""
    speakers = [turn.speaker for turn in turns]
    if all(s is None for s in speakers):
        return ""
    if None in speakers:
        return f"turn {speakers.index(None)} has no speaker while others have one"
    for t, speaker in enumerate(speakers):
        if speaker != speaker_at(t):
            return (f"turn {t} is the {speaker}'s, but training reads speakers by position (user, assistant, ...): "
                    "join consecutive turns of one speaker and start with the user's")
    return ""


def _samples(
    path: Path, root: Path, layout: Layout, summary: DocumentSummary, progress: bool
) -> Iterator[dict[str, Any]]:
    """wds samples of the usable documents; counts and logs the problems, left-out parts and skipped documents."""
    keys = SampleKeys(summary, log, "duplicate_id", "id")
    parse = partial(_parse, layout=layout)
    for lineno, where, (ident, kind, turns) in json_records(path, summary, log, parse, "bad_schema",
                                                            labelled_by("id", "id"), progress):
        key = safe_key(ident)
        if not keys.free(key, where):
            continue
        members = ImageMembers()
        if kind == "story":
            flow = [(turn.text, [StoryImage(root / p, f"{where} turn {t} image {p!r}", {"source": p, "turn": t})
                                 for p in turn.images]) for t, turn in enumerate(turns)]
            parts, name = story_steps(flow, members, summary, log, where), "steps"
        else:
            problem = _speaker_problem(turns)
            if problem:
                summary.problem(log, "bad_speakers", where, problem)
                summary.skip(log, "bad_speakers", where, "speakers out of order")
                continue
            parts, name = [], "turns"
            for t, turn in enumerate(turns):
                media = [members.add(root / p, summary, log, f"{where} turn {t} image {p!r}", "dropped from its turn")
                         for p in turn.images]
                part = dialogue_turn([turn.text.strip()], media, t, summary, log, f"{where} turn {t}")
                if part is not None:
                    parts.append(part)
        if long_enough(parts, name, summary, log, where):
            keys.take(key, f"line {lineno}")
            yield {"__key__": key, "json": {"id": ident, name: parts}, **members}
            summary.wrote(len(parts), len(members))


def convert_jsonl(
    documents: Union[str, Path],
    out: Union[str, Path],
    images: Optional[Union[str, Path]] = None,
    layout: Layout = "story",
    shard_size: int = 1000,
    progress: bool = True,
) -> DocumentSummary:
    """Write ``out/%06d.tar`` shards (``shard_size`` documents each) from a jsonl file in the schema of
    the module doc; relative image paths are read from ``images`` (default: the file's folder),
    ``layout`` is that of the lines that name none; ``progress``: a bar of the lines read."""
    documents = Path(documents)
    check_shard_size(shard_size)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not documents.is_file():
        raise FileNotFoundError(f"documents file not found: {documents}")
    root = Path(images) if images is not None else documents.parent
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {root}")
    summary = DocumentSummary()
    return write_summary_shards(Path(out), _samples(documents, root, layout, summary, progress), shard_size,
                                summary)
