"""The rules of the synthetic world: shape stories and dialogues whose next turn is known.

Every picture is one coloured shape on white. Every turn after the first follows from
the turns before it by a rule, so a model's free output (its words, its decision to
draw, its picture) can be scored exactly, and some facts are carried only by pictures.

Stories (VIST layout, three steps, a picture each). Shapes go forward one place in
``SHAPES`` (circle -> square -> triangle -> circle) and back::

    named:    "first a red circle" / "then a red square"                  / "finally a red circle"
    unnamed:  "first a circle"     / "then the same colour but a square"  / "finally the same colour but a circle"

In an ``unnamed`` story the colour is only ever in the pictures: a model that reads
only the earlier steps' text cannot know it.

Dialogues (MMDialog layout): a request, a reply with its picture, then rounds of a
user turn and a reply::

    user "show me a red circle" | "show me a circle"  -> "here is a red circle" | "here is a circle" + picture
    user "what colour is it"   -> "it is red"           (words only; the colour may live only in the picture)
    user "what shape is it"    -> "it is a circle"      (words only)
    user "now a square"        -> "here is a red square" + picture (the colour from the last picture)
    user "now make it blue"    -> "here is a blue circle" + picture

When the first request names no colour, the reply's colour is drawn at random: that
picture's colour is not scored, but every later turn must agree with it.

Splits. A world item (a story, or a dialogue) has a signature: its texts and its
pictures' colours. ``HARD_PAIRS`` are colour x shape pairs that occur in no training
item of stage 2 (nor in the language model's corpus); items holding one are the
``hard`` split. Of the others, a fixed third of the stories (8 of 28: each kind with four
colours and all three shapes, while each kind's training stories keep every colour and shape)
and a tenth of the dialogue signatures (by a hash) are ``val``: they occur in no training shard either.
Image-caption pairs (stage 1) use every pair: only stage 2 holds pairs out.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (130, 40, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
HARD_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle")})
SPLITS = ("train", "val", "hard")
STORY_KINDS = ("named", "unnamed")
SAME_COLOUR = "the same colour"

Split = Literal["train", "val", "hard"]
Speaker = Literal["story", "user", "assistant"]


@dataclass(frozen=True)
class WorldTurn:
    """One turn and what the rules say of it: its text and its picture (if any).

    ``scored``: a model is asked to write this turn (story steps after the first,
    assistant replies). ``colour_known``: the picture's colour follows from the turns
    before (False for a reply whose colour was drawn at random).
    """

    text: str
    speaker: Speaker
    colour: Optional[str] = None  # the picture's colour; None: no picture
    shape: Optional[str] = None
    scored: bool = False
    colour_known: bool = True

    @property
    def has_image(self) -> bool:
        return self.shape is not None

    def record(self) -> dict[str, object]:
        """The rule fields written into a shard's json beside the turn's text."""
        return {k: v for k, v in asdict(self).items() if k != "text"}


def next_shape(shape: str) -> str:
    return SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]


# ---- stories ----

def story_turns(kind: str, colour: str, shape: str) -> list[WorldTurn]:
    """The three steps of the ``kind`` story that starts with a ``colour`` ``shape``."""
    if kind not in STORY_KINDS:
        raise ValueError(f"story kind must be one of {STORY_KINDS}; got {kind!r}")
    second = next_shape(shape)
    if kind == "named":
        texts = [f"first a {colour} {shape}", f"then a {colour} {second}", f"finally a {colour} {shape}"]
    else:
        texts = [f"first a {shape}", f"then {SAME_COLOUR} but a {second}", f"finally {SAME_COLOUR} but a {shape}"]
    shapes = [shape, second, shape]
    return [WorldTurn(t, "story", colour, s, scored=i > 0) for i, (t, s) in enumerate(zip(texts, shapes))]


def all_story_keys() -> list[tuple[str, str, str]]:
    """Every story of the world: (kind, colour, first shape)."""
    return [(k, c, s) for k in STORY_KINDS for c in COLOURS for s in SHAPES]


# ---- dialogues ----

def dialogue_turns(rng: np.random.Generator, turns: int = 4) -> list[WorldTurn]:
    """A random dialogue of ``turns`` turns (even, >= 2): request + reply, then rounds."""
    if turns < 2 or turns % 2:
        raise ValueError(f"a dialogue has an even number of turns >= 2; got {turns}")
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    if rng.random() < 0.5:
        out = [WorldTurn(f"show me a {colour} {shape}", "user"),
               WorldTurn(f"here is a {colour} {shape}", "assistant", colour, shape, scored=True)]
    else:
        out = [WorldTurn(f"show me a {shape}", "user"),
               WorldTurn(f"here is a {shape}", "assistant", colour, shape, scored=True, colour_known=False)]
    while len(out) < turns:
        move = rng.integers(4)
        if move == 0:
            out += [WorldTurn("what colour is it", "user"), WorldTurn(f"it is {colour}", "assistant", scored=True)]
        elif move == 1:
            out += [WorldTurn("what shape is it", "user"), WorldTurn(f"it is a {shape}", "assistant", scored=True)]
        elif move == 2:
            shape = str(rng.choice([s for s in SHAPES if s != shape]))
            out += [WorldTurn(f"now a {shape}", "user"),
                    WorldTurn(f"here is a {colour} {shape}", "assistant", colour, shape, scored=True)]
        else:
            colour = str(rng.choice([c for c in COLOURS if c != colour]))
            out += [WorldTurn(f"now make it {colour}", "user"),
                    WorldTurn(f"here is a {colour} {shape}", "assistant", colour, shape, scored=True)]
    return out


# ---- splits ----

def signature(turns: list[WorldTurn]) -> str:
    """What identifies a world item: its texts and its pictures' colours and shapes."""
    return " | ".join(f"{t.text} [{t.colour} {t.shape}]" if t.has_image else t.text for t in turns)


def pairs(turns: list[WorldTurn]) -> set[tuple[str, str]]:
    """The colour x shape pairs of an item's pictures."""
    return {(t.colour, t.shape) for t in turns if t.has_image}


def split_of(turns: list[WorldTurn], val_share: int) -> Split:
    """``hard`` if a picture shows a held-out pair; else ``val`` for 1 in ``val_share`` signatures; else ``train``."""
    if pairs(turns) & HARD_PAIRS:
        return "hard"
    return "val" if zlib.crc32(signature(turns).encode()) % val_share == 0 else "train"


STORY_VAL_SHARE = 3
DIALOGUE_VAL_SHARE = 10


def story_split(key: tuple[str, str, str]) -> Split:
    """``hard`` if a picture shows a held-out pair; else ``val`` for one in three keys, one shape
    for each kind and colour (a hash could leave a kind out, or a colour out of a kind's
    training stories); else ``train``."""
    kind, colour, shape = key
    if pairs(story_turns(*key)) & HARD_PAIRS:
        return "hard"
    spread = STORY_KINDS.index(kind) + list(COLOURS).index(colour) + SHAPES.index(shape) * 2
    return "val" if spread % STORY_VAL_SHARE == 0 else "train"


def stories_in(split: Split) -> list[tuple[str, str, str]]:
    """The story keys of ``split``; ValueError for an unknown split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return [key for key in all_story_keys() if story_split(key) == split]


def dialogue_in(split: Split, rng: np.random.Generator, turns: int = 4, tries: int = 10_000) -> list[WorldTurn]:
    """A random dialogue of ``split`` (drawn until one falls in it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    for _ in range(tries):
        dialogue = dialogue_turns(rng, turns)
        if split_of(dialogue, DIALOGUE_VAL_SHARE) == split:
            return dialogue
    raise RuntimeError(f"no {turns}-turn dialogue of split {split!r} in {tries} draws")
