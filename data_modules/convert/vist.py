"""VIST stories (``val_cleaned.json`` + ``val_image_mapping.json``) -> shards, one story per sample.

Input, as in the VIST release used by MiniGPT-5:

- stories: a JSON object ``story_id -> [{"caption", "image_id", "sequence_index"}, ...]``;
  the steps may be listed in any order, they are written in ``sequence_index`` order.
- image mapping: a JSON object ``image_id -> image path``, relative to the mapping
  file's folder unless ``image_root`` is given.

Each sample: ``__key__`` = :func:`safe_key` of the story id, ``json`` =
``{"story_id", "steps": [{"text", "image": "0.jpg", "image_id", "sequence_index"}, ...]}``,
and the images as members ``0.jpg``, ``1.jpg``, ... (step order; non-JPEG images are
re-encoded as JPEG).

Policy: a story with any unusable step (malformed step, empty caption, duplicate
``sequence_index``, image id not in the mapping, image file missing or corrupt) is
skipped whole, since dropping one step would misalign the story. Stories with no
steps, stories that are not a list, and a story whose key repeats an earlier story's
key (the first one keeps the key) are skipped too. Every problem is logged with the
file, story id and step, and counted by kind in :attr:`VistSummary.problems`; each
skipped story is counted once, under its first problem, in :attr:`VistSummary.skipped`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Optional, Union

from data_modules.convert.common import (
    SequenceSummary,
    check_shard_size,
    read_image,
    safe_key,
    write_summary_shards,
)
from minigpt5.progress import progress_bar

log = logging.getLogger(__name__)

STEP_KEYS = ("caption", "image_id", "sequence_index")


@dataclass
class VistSummary(SequenceSummary):
    """What a VIST conversion read, wrote and skipped (``parts`` counts the written steps)."""

    unit: ClassVar[str] = "stories"
    part: ClassVar[str] = "steps"


@dataclass
class _Step:
    index: int  # sequence_index
    caption: str
    image_id: Any  # as in the stories file
    image: bytes  # JPEG


def _load_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"VIST {what} not found: {path}")
    try:
        with path.open(encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def _step(
    step: Any,
    where: str,
    mapping: dict[str, Any],
    mapping_path: Path,
    image_root: Path,
    indexes: dict[int, int],
    position: int,
    summary: VistSummary,
) -> Union[_Step, str]:
    """The checked step, or the kind of its first problem (every problem found is counted and logged).

    ``indexes`` maps the sequence indexes seen so far in the story to their position in the list.
    """
    if not isinstance(step, dict) or any(k not in step for k in STEP_KEYS):
        summary.problem(log, "malformed_step", where, f"expected an object with keys {list(STEP_KEYS)}, got {step!r}")
        return "malformed_step"
    caption, image_id, index = step["caption"], step["image_id"], step["sequence_index"]
    if (
        not isinstance(caption, str)
        or not isinstance(image_id, (str, int))
        or isinstance(image_id, bool)
        or not isinstance(index, int)
        or isinstance(index, bool)
    ):
        want = "a string caption and image_id, an int sequence_index"
        summary.problem(log, "malformed_step", where, f"want {want}: {step!r}")
        return "malformed_step"
    where = f"{where} (sequence_index {index})"
    kinds = []
    if not caption.strip():
        summary.problem(log, "empty_caption", where, "empty caption")
        kinds.append("empty_caption")
    if index in indexes:
        summary.problem(log, "duplicate_index", where, f"sequence_index {index} repeats step {indexes[index]}")
        kinds.append("duplicate_index")
    else:
        indexes[index] = position
    relative = mapping.get(str(image_id))
    if isinstance(relative, str) and relative.strip():
        image = read_image(image_root / relative, summary, log, where)
    else:
        summary.problem(log, "missing_mapping", where, f"image id {image_id!r} has no image path in {mapping_path}")
        image = "missing_mapping"
    if isinstance(image, str):
        kinds.append(image)
    if kinds:
        return kinds[0]
    return _Step(index=index, caption=caption.strip(), image_id=image_id, image=image)


def _samples(
    stories: Iterable[tuple[str, Any]],
    stories_path: Path,
    mapping: dict[str, Any],
    mapping_path: Path,
    image_root: Path,
    summary: VistSummary,
) -> Iterator[dict[str, Any]]:
    """wds samples of the usable stories (``(story id, steps)`` pairs); counts and logs the problems and
    skipped stories."""
    owners: dict[str, str] = {}  # sample key -> the story id that took it
    for story_id, steps in stories:
        summary.read += 1
        where = f"{stories_path}: story {story_id!r}"
        key = safe_key(story_id)
        if key in owners:
            summary.problem(log, "duplicate_story", where, f"key {key!r} already taken by story {owners[key]!r}")
            summary.skip(log, "duplicate_story", where, "its key repeats an earlier story's")
            continue
        owners[key] = story_id
        if not isinstance(steps, list):
            summary.problem(log, "malformed_story", where, f"expected a list of steps, got {type(steps).__name__}")
            summary.skip(log, "malformed_story", where, "not a list of steps")
            continue
        if not steps:
            summary.problem(log, "no_steps", where, "no steps")
            summary.skip(log, "no_steps", where, "no steps")
            continue
        indexes: dict[int, int] = {}
        checked = [
            _step(step, f"{where} step {i}", mapping, mapping_path, image_root, indexes, i, summary)
            for i, step in enumerate(steps)
        ]
        bad = [kind for kind in checked if isinstance(kind, str)]
        if bad:
            summary.skip(log, bad[0], where, f"{len(bad)} of {len(steps)} steps unusable")
            continue
        good = sorted((s for s in checked if isinstance(s, _Step)), key=lambda s: s.index)
        sample: dict[str, Any] = {"__key__": key}
        json_steps = []
        for n, step in enumerate(good):
            name = f"{n}.jpg"
            sample[name] = step.image
            json_steps.append(
                {"text": step.caption, "image": name, "image_id": step.image_id, "sequence_index": step.index}
            )
        sample["json"] = {"story_id": story_id, "steps": json_steps}
        yield sample
        summary.written += 1
        summary.parts += len(good)
        summary.images += len(good)


def convert_vist(
    stories: Union[str, Path],
    images_map: Union[str, Path],
    out: Union[str, Path],
    image_root: Optional[Union[str, Path]] = None,
    shard_size: int = 1000,
    progress: bool = True,
) -> VistSummary:
    """Write ``out/%06d.tar`` shards (``shard_size`` stories each) from the VIST files; see the module doc.
    ``progress``: a bar of the stories read."""
    stories, images_map = Path(stories), Path(images_map)
    check_shard_size(shard_size)
    table = _load_object(stories, "stories file")
    mapping = _load_object(images_map, "image mapping")
    root = Path(image_root) if image_root is not None else images_map.parent
    summary = VistSummary()
    samples = _samples(progress_bar(table.items(), desc=f"vist {stories.name}", unit="story", enabled=progress),
                       stories, mapping, images_map, root, summary)
    return write_summary_shards(Path(out), samples, shard_size, summary)
