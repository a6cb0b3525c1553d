"""The systems a protocol runs: MiniGPT-5 and the Stable Diffusion 2 baseline.

Both draw with the same frozen UNet, sampler, guidance scale, step count and,
for each item, the same seed (derived from the item's group and step), so the
comparison isolates the conditioning: MiniGPT-5's voken features through the mapper
vs SD's own text encoder reading the text.

- :meth:`MiniGPT5System.draw_free` (the ``free`` protocol, the official one) gives the
  context turns and the item's text (VIST: inside the task's prompt) and lets the model
  write on: it draws only if it emits ``[IMG0]`` itself.
- :meth:`MiniGPT5System.draw` (``forced``) is teacher-forced, exactly as validation
  reads a stage-2 example (or a stage-1 caption): the context turns, the target text,
  then the voken block, whose features draw the image.
- :meth:`MiniGPT5System.respond` writes a free response after the history
  (MMDialog): text, and images whenever the model emits ``[IMG0]``.
- :class:`StableDiffusionBaseline` gives the target step's text (``text="target"``)
  or the whole story so far (``text="story"``) straight to SD's text encoder, which
  keeps the first 77 tokens as the SD pipeline does; it draws on every item, under
  either protocol. In the synthetic world's
  protocols it "responds" with the reference text and, where the rules have a picture,
  SD's drawing of it: its text and its decision to draw are given, not its own.
- :class:`WriteThenDraw` is the paper's two-stage comparison (MiniGPT-4 writes, SD
  draws): the LLM writes the turn from the earlier turns' text alone (no vokens, no
  images in), then SD draws the written text; it draws on every turn.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Any, Literal, Optional

import torch
from PIL import Image

from data_modules.interleaved import Context, InterleavedEncoder
from data_modules.shards import SampleCounter
from minigpt5.task_prompts import VIST_IMAGE_PROMPT
from evaluation.items import EvalItem
from minigpt5.config import ConfigError, MiniGPT5Config
from minigpt5.generate import GenerationConfig, GenerationResult, generate_from_ids, generation_settings
from minigpt5.images import to_pil_images
from minigpt5.model import MiniGPT5
from minigpt5.sequences import tokenize_for_text_encoder
from minigpt5.templates import Layout


# How a VIST step's text is given to the model: in the official image-generation prompt, or bare.
VistPrompt = Literal["official", "none"]
VIST_PROMPTS = {"official": VIST_IMAGE_PROMPT, "none": "{text}"}


def target_prompt(protocol: str, vist_prompt: VistPrompt = "official") -> str:
    """The prompt (a format string with ``{text}``) a protocol's target text is given in:
    VIST's by ``vist_prompt``; CC3M's caption is given bare, as the official test items are
    (dataloader.py:54, the instruction rows being training-only)."""
    if vist_prompt not in VIST_PROMPTS:
        raise ConfigError(f"vist_prompt must be one of {', '.join(VIST_PROMPTS)}; got {vist_prompt!r}")
    return VIST_PROMPTS[vist_prompt] if protocol == "vist" else "{text}"


def item_seed(seed: int, item: EvalItem) -> int:
    """A seed fixed by the run seed and the item, the same for every system and subset."""
    return (seed + zlib.crc32(f"{item.group}/{item.step}".encode())) % 2**63


def _generator(model: MiniGPT5, seed: int) -> torch.Generator:
    return torch.Generator(device=model.mapper.queries.device).manual_seed(seed)


def text_before_image(result: GenerationResult) -> str:
    """The text a generation wrote before its first image (all of it, without one)."""
    segments = itertools.takewhile(lambda s: isinstance(s, str), result.segments)
    return " ".join(s.strip() for s in segments if s.strip())


def history_encoder(
    cfg: MiniGPT5Config, counter: SampleCounter, context: Context, max_new_tokens: int
) -> InterleavedEncoder:
    """An encoder of histories that leaves a response room after them: at most half of
    ``llm.max_length`` (or ``max_new_tokens``, if fewer) stays free, the oldest turns dropped
    first as training drops them."""
    llm = cfg.llm
    room = min(max_new_tokens, llm.max_length // 2)
    history_cfg = dataclasses.replace(cfg, llm=dataclasses.replace(llm, max_length=llm.max_length - room + 1))
    return InterleavedEncoder(history_cfg, counter, targets="all", context=context)


def context_pixels(encoder: InterleavedEncoder, encoded: dict[str, Any]) -> Optional[torch.Tensor]:
    """The tower-normalised context images (M, 3, S, S) of an encoded example, or None without any."""
    return encoded["input_pixels"] if encoder.with_images and len(encoded["input_pixels"]) else None


def response_prompt(
    encoder: InterleavedEncoder, history: list[tuple[str, list[Image.Image]]], layout: Layout = "dialogue"
) -> tuple[list[int], Optional[torch.Tensor]]:
    """What a response to ``history`` (turns of text and images, oldest first; a dialogue's
    speakers alternate from the user) is written after: the prompt ids, the response's turn
    opened but not given, and the context images' pixels (M, 3, S, S) or None."""
    encoded = encoder.encode_turn(history + [("", [])], len(history), layout)
    example = encoded["example"]
    return example.input_ids[: example.source_length], context_pixels(encoder, encoded)


class MiniGPT5System:
    """MiniGPT-5 under a generation config (guidance, steps, sampling, seed), a context mode
    and the prompt its target text is given in (``prompt``, with ``{text}``; e.g.
    :data:`minigpt5.task_prompts.VIST_IMAGE_PROMPT`)."""

    name = "MiniGPT-5"

    def __init__(self, model: MiniGPT5, gen: GenerationConfig, context: Context = "both", prompt: str = "{text}") -> None:
        if context != "text" and model.vision is None:
            raise ConfigError(
                f"context '{context}' feeds earlier images to the model, but it has no vision tower "
                "(vision.kind is none, e.g. a stage-1 checkpoint); use context 'text'"
            )
        message = f"the target text's prompt must be a format string whose only field is {{text}}; got {prompt!r}"
        if "{text}" not in prompt:
            raise ConfigError(message)
        try:
            prompt.format(text="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(message) from err
        self.model, self.gen, self.context, self.prompt = model, gen, context, prompt
        self.counter = SampleCounter()
        self.encoder = InterleavedEncoder(model.cfg, self.counter, targets="all", context=context)
        self.history_encoder = history_encoder(model.cfg, self.counter, context, gen.max_new_tokens)

    @property
    def settings(self) -> dict[str, object]:
        return {**generation_settings(self.model, self.gen), "context": self.context, "prompt": self.prompt}

    def given_text(self, item: EvalItem) -> str:
        """The item's target text as the model is given it: inside ``prompt``."""
        return self.prompt.format(text=item.text)

    @torch.no_grad()
    def draw(self, item: EvalItem) -> Image.Image:
        """The image for the item's target text after its context (teacher-forced vokens), or for
        its caption (a CC3M item), worded as the model's template words training examples."""
        sampling = dict(scale=self.settings["guidance_scale"], num_inference_steps=self.settings["num_inference_steps"],
                        generator=_generator(self.model, item_seed(self.gen.seed, item)), sampler=self.settings["sampler"])
        if item.layout == "caption":
            return to_pil_images(self.model.generate_images([self.given_text(item)], **sampling))[0]
        encoded = self._encode_target(item)
        images = self.model.images_for_batch(self.encoder.collate([encoded]), **sampling)
        return to_pil_images(images)[0]

    def _encode_target(self, item: EvalItem) -> dict[str, Any]:
        """The teacher-forced sequence of a story or dialogue item: context, given text, vokens.
        A VIST step is the official image-generation task: its given text is the user's
        request (under the minigpt4 template, the ``###Human:`` turn), the vokens the answer."""
        turns = item.context + [(self.given_text(item), [item.images[0]])]
        return self.encoder.encode_turn(turns, len(item.context), item.layout, task="generate")

    @torch.no_grad()
    def draw_free(self, item: EvalItem) -> tuple[str, list[Image.Image]]:
        """What the model writes on after the item's context and target text: the text, and
        the image if it emits ``[IMG0]`` (at most one: an image item has one image).

        Its input is :meth:`draw`'s sequence up to where the vokens start (the same
        context, cut to fit ``llm.max_length`` the same way)."""
        if item.layout == "caption":
            encoded = {"input_pixels": []}
            ids = self.model.caption_batch([self.given_text(item)])["input_ids"][0].tolist()
        else:
            encoded = self._encode_target(item)
            ids = encoded["example"].input_ids
        ids = ids[: ids.index(self.encoder.voken_ids[0])]  # the target's [IMG0]: context images are placeholders
        cap = 1 if self.gen.max_images is None else min(self.gen.max_images, 1)
        pixels = context_pixels(self.encoder, encoded)
        result = self._generate(item, ids, pixels, dataclasses.replace(self.gen, max_images=cap))
        return result.text.strip(), result.images

    @torch.no_grad()
    def respond(self, item: EvalItem, until_image: bool = False) -> tuple[str, list[Image.Image]]:
        """A free response (text and generated images) after the item's history; ``until_image``:
        only the text before its first image (the official MMDialog scoring cuts it at ``[IMG0]``,
        metric.py:414; training puts a turn's text before its images)."""
        ids, pixels = response_prompt(self.history_encoder, item.context, item.layout)
        result = self._generate(item, ids, pixels, self.gen)
        return (text_before_image(result) if until_image else result.text.strip()), result.images

    def _generate(
        self, item: EvalItem, ids: list[int], pixels: Optional[torch.Tensor], gen: GenerationConfig
    ) -> GenerationResult:
        """Generate after ``ids``, with the context images' ``pixels``, seeded by the item."""
        return generate_from_ids(self.model, ids, pixels, dataclasses.replace(gen, seed=item_seed(gen.seed, item)))


class StableDiffusionBaseline:
    """SD (the checkpoint's frozen text encoder and UNet) prompted with text alone."""

    name = "Stable Diffusion 2"

    def __init__(
        self, model: MiniGPT5, *, text: Literal["target", "story"] = "target", guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None, sampler: Optional[str] = None, seed: int = 42,
    ) -> None:
        if text not in ("target", "story"):
            raise ConfigError(f"the SD baseline's text must be 'target' or 'story'; got {text!r}")
        g = model.cfg.guidance
        self.model, self.text, self.seed = model, text, seed
        self.guidance_scale = g.scale if guidance_scale is None else guidance_scale
        self.num_inference_steps = num_inference_steps or g.num_inference_steps
        self.sampler = sampler or g.sampler

    @property
    def settings(self) -> dict[str, object]:
        return {"guidance_scale": self.guidance_scale, "num_inference_steps": self.num_inference_steps,
                "sampler": self.sampler, "seed": self.seed, "sd_text": self.text}

    def prompt(self, item: EvalItem) -> str:
        if self.text == "target":
            return item.text
        return " ".join(t for t in [text for text, _ in item.context] + [item.text] if t)

    @torch.no_grad()
    def respond(self, item: EvalItem) -> tuple[str, list[Image.Image]]:
        """Synthetic-world protocols: the reference text, and SD's picture of it where the rules draw one."""
        return item.text, [self.draw(item)] if item.images else []

    @torch.no_grad()
    def draw_free(self, item: EvalItem) -> tuple[str, list[Image.Image]]:
        """SD has no decision to make: it draws on every item (no text of its own)."""
        return "", [self.draw(item)]

    @torch.no_grad()
    def draw(self, item: EvalItem) -> Image.Image:
        model = self.model
        length = model.cfg.diffusion.text_max_length
        device = model.mapper.queries.device
        ids = tokenize_for_text_encoder(model.sd_tokenizer, [self.prompt(item)], length).to(device)
        images = model.images_from_condition(
            model.encode_captions(ids), model.null_caption(length, device), scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps, generator=_generator(model, item_seed(self.seed, item)),
            sampler=self.sampler,
        )
        return to_pil_images(images)[0]


class WriteThenDraw:
    """The LLM writes from the earlier turns' text alone, then SD draws what it wrote (every turn)."""

    name = "LLM text, then SD"

    def __init__(self, model: MiniGPT5, gen: GenerationConfig) -> None:
        self.writer = MiniGPT5System(model, dataclasses.replace(gen, max_images=0, force_image=False), context="text")
        settings = self.writer.settings
        self.painter = StableDiffusionBaseline(model, text="target", guidance_scale=settings["guidance_scale"],
                                               num_inference_steps=settings["num_inference_steps"],
                                               sampler=settings["sampler"], seed=gen.seed)

    @property
    def settings(self) -> dict[str, object]:
        return {**self.writer.settings, "painter": "sd-text-encoder"}

    @torch.no_grad()
    def respond(self, item: EvalItem) -> tuple[str, list[Image.Image]]:
        text, _ = self.writer.respond(item)
        return text, [self.painter.draw(dataclasses.replace(item, text=text))]
