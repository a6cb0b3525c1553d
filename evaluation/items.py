"""Test items of the paper's protocols, read from the same shards training reads.

- ``cc3m``: one item per image-caption pair; the caption in, the image out.
- ``vist``: one item per step of every story (``targets="all"``: the earlier steps'
  text and images plus the current step's text in, the image out), or only each
  story's last step (``targets="last"``).
- ``mmdialog``: one item per response turn (every turn after the first, or only the
  last; of either speaker, as the official code, or the assistant's alone, as a model
  trained with ``data.choices.speakers: assistant``); the dialogue history in, the
  response's text and images out.
- ``synthetic-vist``, ``synthetic-dialog``: the synthetic world's stories and dialogues
  (``minigpt5 data synthetic --stories|--dialogues``), one item per turn its rules
  score (story steps after the first, assistant replies), each carrying the rule
  fields of its turns (:mod:`data_modules.world`) for :mod:`evaluation.world_scores`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Optional

import webdataset as wds
from PIL import Image

from data_modules.interleaved import read_turns
from data_modules.shards import BadSample, SampleCounter, decode_sample, expand_shards
from data_modules.turn_choices import ASSISTANT, speaker_at
from minigpt5.templates import Layout

log = logging.getLogger(__name__)

Protocol = Literal["cc3m", "vist", "mmdialog", "synthetic-vist", "synthetic-dialog"]
PROTOCOLS = ("cc3m", "vist", "mmdialog", "synthetic-vist", "synthetic-dialog")
WORLD_PROTOCOLS = ("synthetic-vist", "synthetic-dialog")  # scored by the synthetic world's rules
LAYOUTS: dict[str, Layout] = {"cc3m": "caption", "vist": "story", "synthetic-vist": "story",
                              "mmdialog": "dialogue", "synthetic-dialog": "dialogue"}


def decoding_preset(protocol: str) -> str:
    """The :data:`minigpt5.decoding.PRESETS` entry a protocol decodes with: ``world`` for the
    synthetic world's (its rules score text word for word), ``official`` for the paper's."""
    return "world" if protocol in WORLD_PROTOCOLS else "official"


@dataclass
class EvalItem:
    """One test item: ``context`` turns in, the target turn (``text``, ``images``) to produce."""

    group: str  # the story, dialogue or pair it comes from (its shard key)
    step: int  # index of the target turn in its group
    text: str  # the target turn's text (CC3M: the caption)
    images: list[Image.Image]  # the target turn's ground-truth images
    context: list[tuple[str, list[Image.Image]]] = field(default_factory=list)  # earlier turns, oldest first
    rules: list[dict[str, Any]] = field(default_factory=list)  # synthetic world: rule fields of turns 0..step
    layout: Layout = "story"  # how the model's template words it: a caption, a story step or a dialogue turn


def world_rules(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule fields (text, speaker, colour, shape, scored, ...) of each turn of a synthetic
    world sample; BadSample if the json has none (not written by ``minigpt5 data synthetic``)."""
    record = json.loads(sample["json"])
    turns = record.get("steps", record.get("turns", []))
    if not turns or any("scored" not in turn for turn in turns):
        raise BadSample(sample, "no synthetic-world rule fields (speaker, scored, ...) in its json")
    return turns


SPEAKERS = ("both", "assistant")


def _targets(protocol: Protocol, num_turns: int, targets: str, speakers: str) -> list[int]:
    first = 0 if protocol in ("cc3m", "vist") else 1  # a response (or a world turn) needs a history
    candidates = [t for t in range(first, num_turns)
                  if protocol != "mmdialog" or speakers == "both" or speaker_at(t) == ASSISTANT]
    return candidates[-1:] if targets == "last" else candidates


def read_items(
    shards: str, protocol: Protocol, targets: str = "all", max_items: Optional[int] = None,
    counter: Optional[SampleCounter] = None, speakers: str = "both",
) -> Iterator[EvalItem]:
    """The test items of ``protocol`` in shard order; bad samples are logged, counted and skipped.
    ``speakers`` (mmdialog): whose turns are targets, either speaker's or the assistant's."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    if targets not in ("all", "last"):
        raise ValueError(f"targets must be all or last; got {targets!r}")
    if speakers not in SPEAKERS:
        raise ValueError(f"speakers must be one of {', '.join(SPEAKERS)}; got {speakers!r}")
    counter = counter or SampleCounter()
    produced = 0
    for sample in wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False):
        rules: list[dict[str, Any]] = []
        try:
            if protocol == "cc3m":
                image, caption = decode_sample(sample)
                turns = [(caption, [image])]
            else:
                turns = read_turns(sample)
                if protocol in WORLD_PROTOCOLS:
                    rules = world_rules(sample)
        except BadSample as err:
            counter(err)
            continue
        for t in _targets(protocol, len(turns), targets, speakers):
            if rules and not rules[t]["scored"]:
                continue  # a user's turn: not the model's to write
            if protocol == "vist" and not turns[t][1]:
                counter.note_skipped(sample, f"step {t} has no image to generate")
                continue
            yield EvalItem(
                sample["__key__"], t, turns[t][0], turns[t][1], turns[:t], rules[: t + 1], LAYOUTS[protocol]
            )
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
        world = "world" in record  # written by `minigpt5 data synthetic`: scored by the world's rules
        if "steps" in record:
            return "synthetic-vist" if world else "vist"
        if "turns" in record:
            return "synthetic-dialog" if world else "mmdialog"
        raise ValueError(f"{sample.get('__url__')} sample '{sample.get('__key__')}' is neither an image-caption pair "
                         "nor a story (steps) nor a dialogue (turns)")
    raise ValueError(f"no samples in {shards}")
