"""Stage 2 (MLS): VIST stories and MMDialog dialogues as interleaved training examples.

A shard sample is one story or dialogue (as written by ``minigpt5 data vist|mmdialog|mmc4|jsonl``):
``key.json`` holds its steps/turns, ``key.0.jpg``, ``key.1.jpg``, ... its images. Each
sample expands into examples (:mod:`data_modules.turn_choices`, set by ``choices``):
context messages (text and, unless ``context="text"``, images as input-side images),
maybe a story task's request, and a target (its text, and a voken block plus the target
image per image). ``targets="last"`` makes examples of the last turn only; ``"all"`` of
every turn a task can target. By default a story step or dialogue turn after the first
is the target and the turns before it are the context; ``configs/mls_vist.yaml`` and
``configs/mls_mmdialog.yaml`` read the data as the official code does. The template
(:mod:`minigpt5.templates`) words each example as a story (VIST) or a dialogue (MMDialog).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, Optional

import torch
from PIL import Image

from data_modules.base import ShardDataModule
from data_modules.cache_records import CacheMode
from data_modules.latents import cache_record, cached_moments, collate_targets
from data_modules.shards import BadSample, SampleCounter, ShardSpec, decode_image
from data_modules.turn_choices import (
    Context, Message, Part, SourceTurn, StoryTask, TaskExample, TurnChoices, history_part, sample_examples,
    story_example,
)
from minigpt5.builders import build_llm_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.sequences import SequenceTooLong, Turn, pad_examples
from minigpt5.templates import Conversation, Layout, build_template, dialogue_roles
from minigpt5.vision import IMAGE_TOKEN, geometry, normalise_for_tower, tower_config

log = logging.getLogger(__name__)

Targets = Literal["last", "all"]


def read_record(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``.json`` story or dialogue; BadSample if missing or unreadable."""
    if "json" not in sample:
        raise BadSample(sample, "no .json sequence")
    try:
        record = json.loads(sample["json"])
    except ValueError as err:
        raise BadSample(sample, f"unreadable .json: {err}") from err
    if not isinstance(record, dict):
        raise BadSample(sample, f".json is a {type(record).__name__}, not an object")
    for name, fields in (("steps", _STEP_FIELDS), ("turns", _TURN_FIELDS)):
        if name in record:
            problem = _shape_problem(record[name], fields)
            if problem:
                raise BadSample(sample, f".json '{name}' {problem}")
    return record


# The record fields the readers use, with their types (a list type: a list of strings).
_STEP_FIELDS: dict[str, Any] = {"text": str, "image": str}
_TURN_FIELDS: dict[str, Any] = {"text": str, "images": list, "index": int}


def _shape_problem(items: Any, fields: dict[str, Any]) -> str:
    """What is wrong with a steps/turns list (a list of objects whose ``fields`` have their types), or ""."""
    if not isinstance(items, list):
        return f"is a {type(items).__name__}, not a list"
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"item {i} is a {type(item).__name__}, not an object"
        for name, kind in fields.items():
            value = item.get(name)
            if value is None:
                continue
            if not isinstance(value, kind) or isinstance(value, bool) or (
                    kind is list and not all(isinstance(v, str) for v in value)):
                return f"item {i}: '{name}' is {type(value).__name__} {str(value)[:40]!r}, not {kind.__name__}"
    return ""


def _check_members(sample: dict[str, Any], names: list[str]) -> None:
    for name in names:
        if name not in sample:
            raise BadSample(sample, f"image member '{name}' is missing")


def turn_members(sample: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """A story or dialogue sample -> [(text, image member names)] in order; BadSample if unusable."""
    record = read_record(sample)
    if "steps" in record:  # VIST: one image per step
        turns = [(step.get("text", ""), [step["image"]]) for step in record["steps"]]
    elif "turns" in record:  # MMDialog: zero or more images per turn
        turns = [(turn.get("text", ""), list(turn.get("images", []))) for turn in record["turns"]]
    else:
        raise BadSample(sample, "json has neither 'steps' (VIST) nor 'turns' (MMDialog)")
    _check_members(sample, [name for _, names in turns for name in names])
    return turns


def read_turns(sample: dict[str, Any]) -> list[tuple[str, list[Image.Image]]]:
    """A story or dialogue sample -> [(text, images)] in order; BadSample if unusable."""
    return [(text, [decode_image(sample, name) for name in names]) for text, names in turn_members(sample)]


class InterleavedEncoder:
    """Raw story/dialogue samples -> interleaved examples (``__call__``) -> batches (``collate``)."""

    def __init__(
        self, cfg: MiniGPT5Config, counter: SampleCounter, targets: Targets, context: Context,
        latents: CacheMode = "auto", choices: Optional[TurnChoices] = None, training: bool = False,
    ) -> None:
        """``latents``: cached target latents used where present ("auto"), required, or ignored ("off");
        ``choices``: how samples become examples (None: this project's reading, ``TurnChoices()``);
        ``training``: the examples are training ones (``choices.image_context_dropout`` applies)."""
        self.cfg, self.counter, self.targets, self.context = cfg, counter, targets, context
        self.training = training
        self.choices = choices or TurnChoices()
        self.latents, self.latent_record = latents, cache_record(cfg.diffusion)
        self.tokenizer, self.voken_ids = build_llm_tokenizer(cfg)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        understand = "understand" in self.choices.story_tasks  # its step's image is an input whatever the context
        if understand and cfg.vision.kind == "none":
            raise ValueError("data.choices.story_tasks has 'understand', which reads the step's image, but the model "
                             "has no vision tower (model.config.vision.kind is none)")
        self.with_images = cfg.vision.kind != "none" and (context != "text" or understand)
        self.tower_size, self.image_tokens = 0, 0
        if self.with_images:
            self.tower_size, self.image_tokens, _ = geometry(cfg.vision.kind, tower_config(cfg.vision))
        self.template = build_template(cfg, self.tokenizer, self.voken_ids, self.image_token_id, self.image_tokens)

    def _input_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Context images -> (m, 3, S, S) normalised for the vision tower."""
        if not images:
            return torch.zeros(0, 3, self.tower_size, self.tower_size)
        pixels = torch.stack([to_target_tensor(im, self.tower_size) for im in images])
        return normalise_for_tower(pixels, self.tower_size)

    def count_tokens(self, text: str) -> int:
        """Text tokens of ``text`` (no special tokens), as the official 50-token turn limit counts them."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        tasks = sample_examples(sample, read_record(sample), self.choices, self.targets, self.context,
                                self.count_tokens, self.counter, self.training)
        names = sorted({name for task in tasks for name in task.image_names()})
        _check_members(sample, names)
        decoded = {name: decode_image(sample, name) for name in names}
        examples = []
        for task in tasks:
            try:
                item = self.encode(task.map_images(decoded.__getitem__))
            except SequenceTooLong as err:
                self.counter.note_skipped(sample, f"{task.task} example of turn {task.turn}: {err}")
                continue
            if item["example"].truncated:
                self.counter.note_truncated(sample)
            examples.append(self._with_cached_targets(sample, task.images, item))
        return examples

    def _with_cached_targets(self, sample: dict[str, Any], names: list[str], item: dict[str, Any]) -> dict[str, Any]:
        """``item`` with its target pixels replaced by the cached moments (n, 2c, h, w) when the shard has them.

        (The target images were decoded all the same: context images need decoding, and
        the saving that matters, the VAE encoder, is made.)
        """
        moments = cached_moments(sample, names, self.latent_record, self.latents) if names else None
        if moments is None:
            return item
        item = {k: v for k, v in item.items() if k != "target_pixels"}
        return item | {"target_moments": moments, "target_cached": [True] * len(names)}

    def encode_turn(
        self, turns: list[tuple[str, list[Image.Image]]], t: int, layout: Layout = "story",
        task: StoryTask = "continue",
    ) -> dict[str, Any]:
        """The example of ``turns[t]`` after the turns before it, worded as a story or a dialogue
        (speakers alternating, the user first). A story step is a ``continue`` target (its text
        and images written) or a ``generate`` one (its text is the user's request, its images
        the target), without the official prompts: the text is given as it is.

        Raises SequenceTooLong when the target alone cannot fit ``llm.max_length``.
        """
        source = [SourceTurn(text, list(images), i) for i, (text, images) in enumerate(turns)]
        if layout == "story":
            return self.encode(story_example(task, source, t, "", TurnChoices(), self.context))
        history = [Message(None, [history_part(turn, self.context)]) for turn in source[:t]]
        return self.encode(TaskExample("respond", t, "", history, None, turns[t][0], list(turns[t][1])))

    def encode(self, task: TaskExample[Image.Image]) -> dict[str, Any]:
        """The model inputs of one example, worded by the template: a dialogue's response
        (speakers from the example's roles, or alternating from the user) or a story task.

        Raises SequenceTooLong when the target alone cannot fit ``llm.max_length``.
        """
        layout: Layout = "dialogue" if task.task == "respond" else "story"
        messages = [(message.role, part) for message in task.context for part in message.parts]
        context = [Turn(part.text, len(part.images) if self.with_images else 0) for _, part in messages]
        roles: list = []
        if layout == "dialogue":
            roles = [role for role, _ in messages] + [task.role]
            roles = roles if None not in roles else dialogue_roles(len(roles))
        request = task.request or Part("")
        conversation = Conversation(
            layout, Turn(task.text, len(task.images)), context, roles, instruction=request.text,
            instruction_images=len(request.images) if self.with_images else 0,
        )
        example = self.template.encode(conversation, self.cfg.llm.max_length)
        resolution = self.cfg.diffusion.resolution
        kept = [im for _, part in messages[example.first_context_turn:] for im in part.images] + request.images
        kept = kept if self.with_images else []
        return {
            "example": example,
            "input_pixels": self._input_pixels(kept),  # (m, 3, S, S)
            "target_pixels": torch.stack([to_target_tensor(im, resolution) for im in task.images])
            if task.images else torch.zeros(0, 3, resolution, resolution),  # (n, 3, H, W)
            "target_cached": [False] * len(task.images),
        }

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch ``MiniGPT5.forward`` reads: padded tokens, input and target images in order."""
        batch: dict[str, Any] = pad_examples([i["example"] for i in items], self.tokenizer.pad_token_id)
        batch.update(collate_targets(items))  # (N, 3, H, W) pixels and/or (N, 2c, h, w) moments
        if self.with_images:
            batch["input_pixels"] = torch.cat([i["input_pixels"] for i in items])  # (M, 3, S, S)
        return batch


class InterleavedDataModule(ShardDataModule):
    """VIST or MMDialog shards for stage 2; see the module docstring for the example layout.

    ``targets``: "last" (the paper's last-step setting) or "all" (every turn after the
    first). ``context``: "both" (text and images), "text" (no context images) or "images"
    (no context text); the images a task itself reads (``understand``'s step image) stay.
    ``choices``: the turn-level data choices (:class:`data_modules.turn_choices.TurnChoices`;
    None: this project's reading). Examples whose target cannot fit ``llm.max_length``
    are skipped and counted; longer contexts lose their oldest parts first (counted as
    truncated); turns the choices leave out are counted and logged.
    """

    def __init__(
        self,
        train_shards: ShardSpec,
        val_shards: Optional[ShardSpec] = None,
        targets: Targets = "all",
        context: Context = "both",
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 100,
        samples_per_epoch: int = 10000,
        val_samples: Optional[int] = None,
        seed: int = 0,
        stream_groups: Optional[int] = None,
        model_config: Optional[MiniGPT5Config] = None,
        latents: CacheMode = "auto",
        prefetch_factor: int = 2,
        pin_memory: Optional[bool] = None,
        persistent_val_workers: bool = False,
        worker_start: str = "forkserver",
        max_bad_share: float = 0.1,
        length_grouping: int = 1,
        choices: Optional[TurnChoices] = None,
    ) -> None:
        super().__init__(
            train_shards, val_shards, batch_size, num_workers, shuffle_buffer, samples_per_epoch, val_samples, seed,
            stream_groups=stream_groups, model_config=model_config, latents=latents, prefetch_factor=prefetch_factor,
            pin_memory=pin_memory, persistent_val_workers=persistent_val_workers,
            worker_start=worker_start, max_bad_share=max_bad_share, length_grouping=length_grouping,
        )
        if targets not in ("last", "all") or context not in ("both", "text", "images"):
            raise ValueError(f"targets must be last|all and context both|text|images; got {targets!r}, {context!r}")
        self.targets, self.context, self.choices = targets, context, choices or TurnChoices()

    def _encoder(self, training: bool) -> InterleavedEncoder:
        return InterleavedEncoder(self.model_config, self.counter, self.targets, self.context, self.latents,
                                  self.choices, training)

    def make_encoder(self) -> InterleavedEncoder:
        return self._encoder(training=True)

    def make_val_encoder(self) -> InterleavedEncoder:
        """The training encoder, or without ``choices.image_context_dropout`` where it is on."""
        if not self.choices.image_context_dropout:
            return super().make_val_encoder()
        return self._encoder(training=False)
