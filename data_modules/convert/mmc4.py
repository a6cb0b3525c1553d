"""MMC4 documents (JSON lines) + their images in a folder -> shards, one document per sample, as stories.

Input, one document a line, as MMC4 releases them (github.com/allenai/mmc4; several
files, e.g. its ``docs_shard_*.jsonl``, may be given)::

    {"url": ..., "text_list": ["sentence", ...],
     "image_info": [{"image_name": "b9040a0dbb22.jpg", "matched_text_index": 2, "matched_sim": 0.277, ...}, ...],
     ...}

Other keys (``similarity_matrix``, ``raw_url``, ``face_detections``, ...) are ignored; an
entry's image is ``<images folder>/<image_name>``.

Layout: a document becomes a *story* (VIST's layout, see
:mod:`data_modules.convert.sequence_records`). MMC4 assigns each image to one sentence (a
bipartite matching of images and sentences by CLIP similarity), so a document reads as its
sentences with each image after the sentence it matches: a story whose step is the text since
the previous image followed by one image. It is not a dialogue: nobody takes turns, and the
dialogue layout's examples answer a user's turns with an assistant's, by position. Training
then makes the story tasks of ``data.choices.story_tasks`` (:mod:`data_modules.turn_choices`):
``continue`` (write step t's text and image after the steps before it; the default),
``generate`` (step t's image from its text) and ``understand`` (its text from its image).

Each sample: ``__key__`` = the first 16 hex digits of the SHA-1 of the document's url (a url
holds characters a key may not; a document without a url: of ``file:line``), ``json`` =
``{"url", "steps": [{"text", "image": "0.jpg", "image_name", "matched_text_index",
"matched_sim"}, ...]}``, and the images as members ``0.jpg``, ``1.jpg``, ... (non-JPEG
images re-encoded as JPEG).

Selection, by the options (counted in :attr:`MMC4Summary.left_out`, not problems):
images whose ``matched_sim`` is below ``min_sim`` (default 0.24, OpenFlamingo's setting for
MMC4) are not read; the first ``max_images`` usable images in document order make the steps
(default 6, OpenFlamingo's too); the text after the last step's image is left out.

Problems, each logged with ``file:line`` and counted by kind in ``problems``:

- ``bad_text`` / ``bad_json`` (line not UTF-8 / not JSON) and ``missing_key`` (not an object,
  or ``text_list``, ``image_info`` or an entry's ``image_name``, ``matched_text_index``,
  ``matched_sim``, or ``url`` missing or of the wrong type): the document is skipped;
- ``duplicate_url`` (the url of a document written before; MMC4 says about 3% of its urls
  may repeat, ``could_have_url_duplicate``): skipped, so the first usable copy is kept;
- ``bad_index`` (``matched_text_index`` outside ``text_list``), ``duplicate_image`` (an
  ``image_name`` the document already has) and ``shared_sentence`` (a second image matched to
  one sentence; MMC4's matching gives a sentence at most one): that image is dropped (of two
  sharing a sentence, the less similar);
- ``missing_image`` / ``corrupt_image``: the image is dropped and the document kept, its
  sentence joining the next step's text; ``image_without_text``: an image with no text since
  the previous one is dropped (:func:`~data_modules.convert.sequence_records.story_steps`);
- ``too_short`` (fewer than 2 steps left; the first step is only ever context): skipped.

Skipped documents are counted by reason in ``skipped``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Sequence, Union

from data_modules.convert.common import check_shard_size, write_summary_shards
from data_modules.convert.json_lines import SampleKeys, json_records
from data_modules.convert.sequence_records import DocumentSummary, ImageMembers, StoryImage, long_enough, story_steps

log = logging.getLogger(__name__)

MIN_SIM = 0.24  # OpenFlamingo's --mmc4_textsim_threshold
MAX_IMAGES = 6  # OpenFlamingo's --mmc4_max_num_images


@dataclass
class MMC4Summary(DocumentSummary):
    """What an MMC4 conversion read, wrote, left out and skipped (``parts`` counts the written steps)."""

    part: ClassVar[str] = "steps"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse(record: Any) -> tuple[Optional[str], list[str], list[tuple[str, int, float]]]:
    """(url, sentences, [(image_name, matched_text_index, matched_sim)]) of one document; raises
    ValueError naming what is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    url, texts, infos = record.get("url"), record.get("text_list"), record.get("image_info")
    if url is not None and not isinstance(url, str):
        raise ValueError(f"'url' must be a string, got {url!r}")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"'text_list' must be a list of strings, got {str(texts)[:80]!r}")
    if not isinstance(infos, list):
        raise ValueError(f"'image_info' must be a list, got {str(infos)[:80]!r}")
    images = []
    for i, info in enumerate(infos):
        if not isinstance(info, dict):
            raise ValueError(f"image_info {i}: expected an object, got {info!r}")
        name, index, sim = info.get("image_name"), info.get("matched_text_index"), info.get("matched_sim")
        if not isinstance(name, str) or not name or not isinstance(index, int) or isinstance(index, bool) \
                or not _is_number(sim):
            raise ValueError(f"image_info {i}: want a string image_name, an int matched_text_index and a number "
                             f"matched_sim, got {info!r}")
        images.append((name, index, float(sim)))
    return url, texts, images


def _placed(
    images: list[tuple[str, int, float]], n_texts: int, folder: Path, min_sim: float, summary: DocumentSummary,
    where: str,
) -> dict[int, StoryImage]:
    """Sentence index -> the image placed after it: the entries that pass the checks and ``min_sim``."""
    placed: dict[int, tuple[float, StoryImage]] = {}
    names: set[str] = set()
    for i, (name, index, sim) in enumerate(images):
        here = f"{where} image {i} {name!r}"
        if not 0 <= index < n_texts:
            summary.problem(log, "bad_index", here, f"matched_text_index {index} outside text_list "
                                                   f"({n_texts} sentences); dropped")
            continue
        if name in names:
            summary.problem(log, "duplicate_image", here, "image_name repeats an earlier entry's; dropped")
            continue
        names.add(name)
        if sim < min_sim:
            summary.left_out["below_min_sim"] += 1
            continue
        image = StoryImage(folder / name, here, {"image_name": name, "matched_text_index": index, "matched_sim": sim})
        if index in placed:
            other_sim, other = placed[index]
            summary.problem(log, "shared_sentence", here, f"sentence {index} is also matched by "
                                                          f"{other.fields['image_name']!r}; the less similar dropped")
            if sim <= other_sim:
                continue
        placed[index] = (sim, image)
    return {index: image for index, (_, image) in placed.items()}


def _samples(
    paths: Sequence[Path], folder: Path, min_sim: float, max_images: int, summary: DocumentSummary, progress: bool
) -> Iterator[dict[str, Any]]:
    """wds samples of the usable documents; counts and logs the problems, left-out parts and skipped documents."""
    keys = SampleKeys(summary, log, "duplicate_url", "url")
    for path in paths:
        for lineno, where, (url, texts, images) in json_records(path, summary, log, _parse, "missing_key",
                                                                     progress=progress):
            key = hashlib.sha1((url if url is not None else f"{path}:{lineno}").encode()).hexdigest()[:16]
            if not keys.free(key, f"{where}: url {url!r}"):
                continue
            placed = _placed(images, len(texts), folder, min_sim, summary, where)
            flow = [(text, [placed[i]] if i in placed else []) for i, text in enumerate(texts)]
            members = ImageMembers()
            steps = story_steps(flow, members, summary, log, where, max_images)
            if long_enough(steps, "steps", summary, log, where):
                keys.take(key, where)
                yield {"__key__": key, "json": {"url": url, "steps": steps}, **members}
                summary.wrote(len(steps), len(members))


def convert_mmc4(
    documents: Union[str, Path, Sequence[Union[str, Path]]],
    images: Union[str, Path],
    out: Union[str, Path],
    min_sim: float = MIN_SIM,
    max_images: int = MAX_IMAGES,
    shard_size: int = 1000,
    progress: bool = True,
) -> MMC4Summary:
    """Write ``out/%06d.tar`` shards (``shard_size`` documents each) from MMC4 jsonl file(s); see the module doc.
    ``progress``: a bar of the lines read."""
    paths = [Path(documents)] if isinstance(documents, (str, Path)) else [Path(p) for p in documents]
    folder = Path(images)
    check_shard_size(shard_size)
    if max_images < 2:
        raise ValueError(f"max_images must be >= 2 (a story needs 2 steps), got {max_images}")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"MMC4 documents file not found: {path}")
    if not folder.is_dir():
        raise FileNotFoundError(f"MMC4 images folder not found: {folder}")
    summary = MMC4Summary()
    samples = _samples(paths, folder, min_sim, max_images, summary, progress)
    return write_summary_shards(Path(out), samples, shard_size, summary)
