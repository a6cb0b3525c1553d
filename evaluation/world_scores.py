"""Scoring free generation in the synthetic world by its rules (``synthetic-vist``, ``synthetic-dialog``).

The model writes each scored turn freely after its context (it decides whether to
emit ``[IMG0]``), and the turn is scored against what the world's rules
(:mod:`data_modules.world`) say it must be:

- text: the written words equal the rule's (case and spacing aside);
- image decision: a picture is drawn where the rule has one and not where it has none
  (precision, recall and F1 over turns);
- image: the first picture shows the rule's colour (:func:`dominant_colour`) and shape
  (:func:`dominant_shape`); a missing picture counts as wrong; a colour the rule leaves
  to chance (a request that names none) is not scored;
- coherence: the picture shows what the model's own words name: every colour and shape
  word, and for "the same colour" the colour of the last earlier picture.

Every score is a fraction with its count. ``colour_from_image`` repeats the colour
score on the turns whose colour is named in no earlier text, so only an earlier
picture carries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image

from data_modules.synthetic import dominant_colour, dominant_shape
from data_modules.world import COLOURS, SAME_COLOUR, SHAPES

CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES)}
# The world's turns are decoded greedily and without a repetition penalty wherever they are
# scored: minigpt5.decoding's "world" preset, which evaluation.items.decoding_preset picks.


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def normalise(text: str) -> str:
    return " ".join(words(text))


@dataclass(frozen=True)
class TurnScore:
    """One scored turn; None where a score does not apply to it."""

    text_correct: bool
    expected_image: bool
    produced_image: bool
    colour_right: Optional[bool]  # None: no picture expected, or its colour left to chance
    shape_right: Optional[bool]  # None: no picture expected
    coherent: Optional[bool]  # None: no picture drawn, or the words name nothing to check
    colour_from_image: bool  # the expected colour is named in no earlier text


def named_attributes(text: str, context_colour: Optional[str]) -> tuple[set[str], set[str]]:
    """Colours and shapes the words name; "the same colour" names ``context_colour``."""
    found = words(text)
    colours = {w for w in found if w in COLOURS}
    if normalise(SAME_COLOUR) in normalise(text) and context_colour is not None:
        colours.add(context_colour)
    return colours, {w for w in found if w in SHAPES}


def score_turn(rules: list[dict[str, Any]], context_texts: list[str], text: str, images: list[Image.Image]) -> TurnScore:
    """Score a written turn (``text``, ``images``) against ``rules``: the rule fields of every
    turn up to and including the target (the last), and the earlier turns' texts."""
    target = rules[-1]
    expected_text = target["text"]
    expected_image = target.get("shape") is not None
    picture = images[0] if images else None
    colour = dominant_colour(picture) if picture is not None else None
    shape = dominant_shape(picture) if picture is not None else None
    colour_right = shape_right = None
    if expected_image:
        shape_right = shape == target["shape"]
        if target.get("colour_known", True):
            colour_right = colour == target["colour"]
    earlier = [r["colour"] for r in rules[:-1] if r.get("colour") is not None]
    coherent = None
    if picture is not None:
        colours, shapes = named_attributes(text, earlier[-1] if earlier else None)
        if colours or shapes:
            coherent = all(c == colour for c in colours) and all(s == shape for s in shapes)
    context_words = {w for t in context_texts for w in words(t)}
    return TurnScore(
        text_correct=normalise(text) == normalise(expected_text),
        expected_image=expected_image,
        produced_image=picture is not None,
        colour_right=colour_right,
        shape_right=shape_right,
        coherent=coherent,
        colour_from_image=expected_image and target.get("colour") not in context_words,
    )


def fraction(hits: int, count: int) -> dict[str, Any]:
    return {"value": hits / count if count else None, "hits": hits, "count": count}


@dataclass
class WorldScores:
    """Accumulates :class:`TurnScore` s into fractions with counts, and the chance levels beside them."""

    turns: list[TurnScore] = field(default_factory=list)

    def add(self, score: TurnScore) -> None:
        self.turns.append(score)

    def _share(self, attribute: str, only: Optional[str] = None) -> dict[str, Any]:
        values = [getattr(t, attribute) for t in self.turns if only is None or getattr(t, only)]
        values = [v for v in values if v is not None]
        return fraction(sum(values), len(values))

    def result(self) -> dict[str, Any]:
        tp = sum(t.expected_image and t.produced_image for t in self.turns)
        fp = sum(t.produced_image and not t.expected_image for t in self.turns)
        fn = sum(t.expected_image and not t.produced_image for t in self.turns)
        precision, recall = fraction(tp, tp + fp), fraction(tp, tp + fn)
        p, r = precision["value"], recall["value"]
        f1 = 2 * p * r / (p + r) if p and r else 0.0
        expected = sum(t.expected_image for t in self.turns)
        share = expected / len(self.turns) if self.turns else 0.0
        return {
            "items": len(self.turns),
            "text_correct": self._share("text_correct"),
            "image_precision": precision,
            "image_recall": recall,
            "image_f1": f1,
            "colour_right": self._share("colour_right"),
            "shape_right": self._share("shape_right"),
            "colour_from_image": self._share("colour_right", only="colour_from_image"),
            "coherence": self._share("coherent"),
            # What guessing gets: a uniformly random colour or shape; drawing on every turn.
            "chance": {"colour": CHANCE["colour"], "shape": CHANCE["shape"],
                       "image_f1_always": 2 * share / (1 + share) if share else 0.0, "text": 0.0},
        }


WORLD_METRICS = ("text_correct", "image_precision", "image_recall", "colour_right", "shape_right",
                 "colour_from_image", "coherence")


def world_summary(metrics: dict[str, Any]) -> str:
    """One line of a world run's scores: each fraction with its count, the F1 and the chance levels."""
    parts = []
    for key in WORLD_METRICS:
        m = metrics[key]
        parts.append(f"{key} {m['value']:.2f} ({m['hits']}/{m['count']})" if m["count"] else f"{key} –")
    chance = metrics["chance"]
    parts.append(f"image_f1 {metrics['image_f1']:.2f}")
    return (", ".join(parts) + f"; chance: colour {chance['colour']:.2f}, shape {chance['shape']:.2f}, "
            f"image_f1 always drawing {chance['image_f1_always']:.2f}")
