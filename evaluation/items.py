"""Test items of the paper's protocols, read from the same shards training reads.

- ``cc3m``: one item per image-caption pair; the caption in, the image out.
- ``vist``: one item per step of every story (``targets="all"``: the earlier steps'
  text and images plus the current step's text in, the image out), or only each
  story's last step (``targets="last"``).
- ``mmdialog``: one item per response turn (every turn after the first, or only the
  last); the dialogue history in, the response's text and images out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import webdataset as wds
from PIL import Image

from data_modules.interleaved import read_turns
from data_modules.shards import BadSample, SampleCounter, decode_sample, expand_shards

log = logging.getLogger(__name__)

Protocol = Literal["cc3m", "vist", "mmdialog"]
PROTOCOLS = ("cc3m", "vist", "mmdialog")


@dataclass
class EvalItem:
    """One test item: ``context`` turns in, the target turn (``text``, ``images``) to produce."""

    group: str  # the story, dialogue or pair it comes from (its shard key)
    step: int  # index of the target turn in its group
    text: str  # the target turn's text (CC3M: the caption)
    images: list[Image.Image]  # the target turn's ground-truth images
    context: list[tuple[str, list[Image.Image]]] = field(default_factory=list)  # earlier turns, oldest first


def _targets(protocol: Protocol, num_turns: int, targets: str) -> range:
    first = 1 if protocol == "mmdialog" else 0  # a response needs a history; a VIST step does not
    return range(num_turns - 1, num_turns) if targets == "last" else range(first, num_turns)


def read_items(
    shards: str, protocol: Protocol, targets: str = "all", max_items: Optional[int] = None,
    counter: Optional[SampleCounter] = None,
) -> Iterator[EvalItem]:
    """The test items of ``protocol`` in shard order; bad samples are logged, counted and skipped."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    if targets not in ("all", "last"):
        raise ValueError(f"targets must be all or last; got {targets!r}")
    counter = counter or SampleCounter()
    produced = 0
    for sample in wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False):
        try:
            if protocol == "cc3m":
                image, caption = decode_sample(sample)
                turns = [(caption, [image])]
            else:
                turns = read_turns(sample)
        except BadSample as err:
            counter(err)
            continue
        for t in _targets(protocol, len(turns), targets):
            if protocol == "vist" and not turns[t][1]:
                counter.note_skipped(sample, f"step {t} has no image to generate")
                continue
            yield EvalItem(sample["__key__"], t, turns[t][0], turns[t][1], turns[:t])
            produced += 1
            if max_items is not None and produced >= max_items:
                return


def detect_protocol(shards: str) -> Protocol:
    """The protocol the shards' first sample calls for: an image-caption pair (cc3m), a
    story with ``steps`` (vist) or a dialogue with ``turns`` (mmdialog)."""
    for sample in wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False):
        if "txt" in sample:
            return "cc3m"
        try:
            record = json.loads(sample.get("json", b"{}"))
        except ValueError as err:
            raise ValueError(f"{sample.get('__url__')} sample '{sample.get('__key__')}': unreadable .json: {err}") from err
        if "steps" in record:
            return "vist"
        if "turns" in record:
            return "mmdialog"
        raise ValueError(f"{sample.get('__url__')} sample '{sample.get('__key__')}' is neither an image-caption pair "
                         "nor a story (steps) nor a dialogue (turns)")
    raise ValueError(f"no samples in {shards}")
