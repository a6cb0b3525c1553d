"""Story steps and dialogue turns in the shard layouts :mod:`data_modules.interleaved` reads,
built from checked input by the sequence converters, with their images as numbered members.

Story layout (VIST's): ``json`` ``{"steps": [{"text", "image": "0.jpg", ...}]}``, exactly one
image per step. Dialogue layout (MMDialog's): ``json`` ``{"turns": [{"text", "images",
"texts", "media", "index"}]}``, any number of images per turn. Members ``0.jpg``, ``1.jpg``,
... are numbered across the sample.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from data_modules.convert.common import SequenceSummary, read_image

MIN_PARTS = 2  # usable steps/turns a sample needs: the first is only ever context, never a target


@dataclass
class DocumentSummary(SequenceSummary):
    """A conversion of documents into stories or dialogues; ``left_out`` counts the parts the
    options or the story layout leave out by design (not problems in the input)."""

    unit: ClassVar[str] = "documents"
    part: ClassVar[str] = "steps/turns"

    left_out: Counter = field(default_factory=Counter)  # reason -> images or texts left out

    def more_counts(self) -> str:
        left = ", ".join(f"{reason} {count}" for reason, count in sorted(self.left_out.items()))
        return f"left out by design: {left or 'none'}; "


class ImageMembers(dict[str, bytes]):
    """A sample's image members, ``0.jpg``, ``1.jpg``, ... in the order they were added."""

    def add(self, path: Path, summary: SequenceSummary, log: logging.Logger, where: str, then: str) -> Optional[str]:
        """Read ``path`` into the next member: its name, or None when the image is missing or
        corrupt (counted and logged at ``where``, with ``then``: what happens instead)."""
        image = read_image(path, summary, log, where, then)
        if isinstance(image, str):
            return None
        name = f"{len(self)}.jpg"
        self[name] = image
        return name


@dataclass
class StoryImage:
    """An image in a story's flow: its file, where it is named (for the log), the fields its step keeps."""

    path: Path
    where: str
    fields: dict[str, Any] = field(default_factory=dict)


def story_steps(
    flow: list[tuple[str, list[StoryImage]]],
    members: ImageMembers,
    summary: DocumentSummary,
    log: logging.Logger,
    where: str,
    max_images: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Story steps ``{"text", "image", **fields}`` from (text, images) pairs in reading order.

    A step is the texts since the previous step (stripped, joined with a space) and then one
    image, so a text without an image joins the next step's text. An image with no text
    before it (``image_without_text``) or whose file is missing or corrupt is dropped (a
    problem, counted and logged); its text, if any, joins the next step. Once there are
    ``max_images`` steps, later images are not read (``left_out["over_max_images"]``). Texts
    after the last step's image are left out too (``left_out["text_after_last_image"]``):
    a story step ends with its image.
    """
    steps: list[dict[str, Any]] = []
    pending: list[str] = []  # texts since the last step
    for text, images in flow:
        if text.strip():
            pending.append(text.strip())
        for image in images:
            if max_images is not None and len(steps) >= max_images:
                summary.left_out["over_max_images"] += 1
                continue
            if not pending:
                summary.problem(log, "image_without_text", image.where, "no text since the previous image; dropped")
                continue
            name = members.add(image.path, summary, log, image.where, "dropped, its text joins the next step")
            if name is not None:
                steps.append({"text": " ".join(pending), "image": name, **image.fields})
                pending = []
    if pending and steps:
        summary.left_out["text_after_last_image"] += len(pending)
        log.debug("%s: %d texts after the last image left out", where, len(pending))
    return steps


def dialogue_turn(
    texts: list[str], media: list[Optional[str]], index: int, summary: SequenceSummary, log: logging.Logger,
    where: str,
) -> Optional[dict[str, Any]]:
    """A dialogue turn record from its texts (stripped) and its media (member name, or None for an
    image that was missing or corrupt) at position ``index`` of the input; None (``empty_turn``,
    counted and logged) when it has no text and no usable image."""
    text, names = " ".join(x for x in texts if x), [name for name in media if name is not None]
    if not text and not names:
        summary.problem(log, "empty_turn", where, "no text and no usable image; turn dropped")
        return None
    return {"text": text, "images": names, "texts": texts, "media": media, "index": index}


def long_enough(parts: list[Any], part: str, summary: SequenceSummary, log: logging.Logger, where: str) -> bool:
    """Whether a sequence has :data:`MIN_PARTS` usable ``part`` (steps, turns); if not, it is counted
    as ``too_short`` and skipped."""
    if len(parts) >= MIN_PARTS:
        return True
    summary.problem(log, "too_short", where, f"{len(parts)} usable {part}, want at least {MIN_PARTS}")
    summary.skip(log, "too_short", where, f"too few {part}")
    return False
