"""The chat's logic, free of any web framework: a conversation's state, the generation of
one reply after it, and the conversation as a self-contained HTML page.

A conversation is a list of :class:`Exchange` s: the user's message (text and attached
images), then the model's reply (a :class:`~minigpt5.generate.GenerationResult`: text and
generated images). :meth:`ChatEngine.reply` words every earlier exchange as a dialogue,
speakers alternating from the user, as ``minigpt5 eval`` words an MMDialog history
(:func:`evaluation.systems.response_prompt`): each turn's text, then its images read as
context (the model's own pictures too), the oldest turns dropped first when the history
outgrows ``llm.max_length``. A model without a vision tower (a stage-1 checkpoint) reads
the text of the history only, and refuses attached images.

The browser front end (:mod:`lit_models.chat_app`) only shows what this module computes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

from PIL import Image

from data_modules.shards import SampleCounter
from evaluation.systems import history_encoder, response_prompt
from lit_models.pages import conversation_html
from minigpt5.generate import (
    GenerationConfig, GenerationResult, check_plain_text, generate_from_ids, generation_settings,
)

if TYPE_CHECKING:
    from minigpt5.model import MiniGPT5

DrawMode = Literal["auto", "draw", "none"]
DRAW_MODES: tuple[DrawMode, ...] = ("auto", "draw", "none")  # the model decides, an image is drawn, text only
PAGE_NAME = "minigpt5_chat.html"  # the downloaded page's file name


@dataclass(frozen=True)
class TurnOptions:
    """What the user sets for one reply; None takes the engine's default."""

    draw: DrawMode = "auto"
    seed: Optional[int] = None
    guidance_scale: Optional[float] = None
    num_inference_steps: Optional[int] = None
    sampler: Optional[str] = None

    def __post_init__(self) -> None:
        if self.draw not in DRAW_MODES:
            raise ValueError(f"draw must be one of {', '.join(DRAW_MODES)}; got {self.draw!r}")


@dataclass
class Exchange:
    """One round: the user's message and the model's reply."""

    text: str
    images: list[Image.Image]
    reply: GenerationResult

    def turns(self) -> list[tuple[str, list[Image.Image]]]:
        """The round as two dialogue turns (text, images): the user's, then the model's."""
        return [(self.text, list(self.images)), (self.reply.text, self.reply.images)]


def turn_config(base: GenerationConfig, options: TurnOptions) -> GenerationConfig:
    """``base`` with one reply's options on top: ``draw`` writes ``[IMG0]`` first (the official
    force_generation), ``none`` masks it (text only), ``auto`` leaves it to the model."""
    if options.draw == "draw":
        drawing = {"force_image": True, "max_images": base.max_images or None}  # 0 would forbid the forced image
    elif options.draw == "none":
        drawing = {"force_image": False, "max_images": 0}
    else:
        drawing = {"force_image": False}
    chosen = {
        "seed": options.seed, "guidance_scale": options.guidance_scale,
        "num_inference_steps": options.num_inference_steps, "sampler": options.sampler,
    }
    return dataclasses.replace(base, **drawing, **{k: v for k, v in chosen.items() if v is not None})


class ChatEngine:
    """One model and its decoding defaults, shared by every conversation; holds no conversation."""

    def __init__(self, model: "MiniGPT5", gen: GenerationConfig) -> None:
        self.model, self.gen = model, gen
        self.reads_images = model.vision is not None
        self.encoder = history_encoder(model.cfg, SampleCounter(), "both" if self.reads_images else "text",
                                       gen.max_new_tokens)

    @property
    def defaults(self) -> TurnOptions:
        """The options a reply takes when the user sets none (the model's guidance settings filled in)."""
        settings = generation_settings(self.model, self.gen)
        return TurnOptions("auto", settings["seed"], settings["guidance_scale"], settings["num_inference_steps"],
                           settings["sampler"])

    def reply(self, history: list[Exchange], text: str, images: Optional[list[Image.Image]] = None,
              options: Optional[TurnOptions] = None) -> Exchange:
        """The model's reply to ``text`` and ``images`` after ``history``, as a new exchange
        (``history`` is left as it was)."""
        images = list(images or [])
        if not text.strip() and not images:
            raise ValueError("write a message or attach an image")
        check_plain_text(self.model, text)
        if images and not self.reads_images:
            raise ValueError("this model has no vision tower (e.g. a stage-1 checkpoint): it cannot read "
                             "attached images; send text only")
        turns = [turn for exchange in history for turn in exchange.turns()] + [(text, images)]
        ids, pixels = response_prompt(self.encoder, turns, "dialogue")
        cfg = turn_config(self.gen, options or TurnOptions())
        result = generate_from_ids(self.model, ids, pixels, cfg, prompt=text, images=images)
        return Exchange(text, images, result)


def chat_html(history: list[Exchange]) -> str:
    """The conversation as the self-contained page ``minigpt5 generate`` writes, one section per turn."""
    return conversation_html([(e.text, e.images, e.reply) for e in history])


def save_chat_html(history: list[Exchange], path: Union[str, Path]) -> Path:
    """Write :func:`chat_html` to ``path`` (its folder made if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(chat_html(history), encoding="utf-8")
    return path
