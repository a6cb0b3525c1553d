"""Stage 2 (MLS): VIST stories and MMDialog dialogues as interleaved training examples.

A shard sample is one story or dialogue (as written by ``minigpt5 data vist|mmdialog``):
``key.json`` holds its steps/turns, ``key.0.jpg``, ``key.1.jpg``, ... its images. Each
sample expands into examples: the earlier turns are the context (text and, unless
``context="text"``, images as input-side images) and one turn is the target (its text,
and a voken block plus the target image per image). ``targets="last"`` makes one
example per sample (the last turn); ``"all"`` one per turn after the first. The
template (:mod:`minigpt5.templates`) words each as a story (VIST) or a dialogue (MMDialog).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, Optional

import torch
from PIL import Image

from data_modules.base import ShardDataModule
from data_modules.latents import LatentMode, cache_record, cached_moments, collate_targets
from data_modules.shards import BadSample, SampleCounter, ShardSpec, decode_image
from minigpt5.builders import build_llm_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.sequences import SequenceTooLong, Turn, pad_examples
from minigpt5.templates import Conversation, Layout, build_template, dialogue_roles
from minigpt5.vision import IMAGE_TOKEN, geometry, normalise_for_tower, tower_config

log = logging.getLogger(__name__)

Targets = Literal["last", "all"]
Context = Literal["both", "text", "images"]


def turn_members(sample: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """A story or dialogue sample -> [(text, image member names)] in order; BadSample if unusable."""
    if "json" not in sample:
        raise BadSample(sample, "no .json sequence")
    try:
        record = json.loads(sample["json"])
    except ValueError as err:
        raise BadSample(sample, f"unreadable .json: {err}") from err
    if "steps" in record:  # VIST: one image per step
        turns = [(step.get("text", ""), [step["image"]]) for step in record["steps"]]
    elif "turns" in record:  # MMDialog: zero or more images per turn
        turns = [(turn.get("text", ""), list(turn.get("images", []))) for turn in record["turns"]]
    else:
        raise BadSample(sample, "json has neither 'steps' (VIST) nor 'turns' (MMDialog)")
    for _, names in turns:
        for name in names:
            if name not in sample:
                raise BadSample(sample, f"image member '{name}' is missing")
    return turns


def sequence_layout(sample: dict[str, Any]) -> Layout:
    """``story`` for a VIST sample (``steps``), ``dialogue`` for an MMDialog one (``turns``)."""
    return "story" if "steps" in json.loads(sample["json"]) else "dialogue"


def decode_turns(sample: dict[str, Any], members: list[tuple[str, list[str]]]) -> list[tuple[str, list[Image.Image]]]:
    """The turns of :func:`turn_members` with their images decoded; BadSample if one is unreadable."""
    return [(text, [decode_image(sample, name) for name in names]) for text, names in members]


def read_turns(sample: dict[str, Any]) -> list[tuple[str, list[Image.Image]]]:
    """A story or dialogue sample -> [(text, images)] in order; BadSample if unusable."""
    return decode_turns(sample, turn_members(sample))


class InterleavedEncoder:
    """Raw story/dialogue samples -> interleaved examples (``__call__``) -> batches (``collate``)."""

    def __init__(
        self, cfg: MiniGPT5Config, counter: SampleCounter, targets: Targets, context: Context,
        latents: LatentMode = "auto",
    ) -> None:
        """``latents``: cached target latents used where present ("auto"), required, or ignored ("off")."""
        self.cfg, self.counter, self.targets, self.context = cfg, counter, targets, context
        self.latents, self.latent_record = latents, cache_record(cfg.diffusion)
        self.tokenizer, self.voken_ids = build_llm_tokenizer(cfg)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.with_images = cfg.vision.kind != "none" and context != "text"
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

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        members = turn_members(sample)
        turns = decode_turns(sample, members)
        if len(turns) < 2:
            raise BadSample(sample, f"{len(turns)} turn(s): need a context and a target")
        indices = range(1, len(turns)) if self.targets == "all" else [len(turns) - 1]
        layout = sequence_layout(sample)
        examples = []
        for t in indices:
            try:
                item = self.encode_turn(turns, t, layout)
            except SequenceTooLong as err:
                self.counter.note_skipped(sample, f"target turn {t}: {err}")
                continue
            if item["example"].truncated:
                self.counter.note_truncated(sample)
            examples.append(self._with_cached_targets(sample, members[t][1], item))
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
        self, turns: list[tuple[str, list[Image.Image]]], t: int, layout: Layout = "story"
    ) -> dict[str, Any]:
        """The example whose target is ``turns[t]`` and whose context is the turns before it,
        worded by the template as a story or a dialogue (speakers alternating, the user first).

        Raises SequenceTooLong when the target alone cannot fit ``llm.max_length``.
        """
        context = [
            Turn(text if self.context != "images" else "", len(images) if self.with_images else 0)
            for text, images in turns[:t]
        ]
        target_text, target_images = turns[t]
        roles = dialogue_roles(t + 1) if layout == "dialogue" else []
        conversation = Conversation(layout, Turn(target_text, len(target_images)), context, roles)
        example = self.template.encode(conversation, self.cfg.llm.max_length)
        resolution = self.cfg.diffusion.resolution
        kept = [im for _, images in turns[example.first_context_turn:t] for im in images] if self.with_images else []
        return {
            "example": example,
            "input_pixels": self._input_pixels(kept),  # (m, 3, S, S)
            "target_pixels": torch.stack([to_target_tensor(im, resolution) for im in target_images])
            if target_images else torch.zeros(0, 3, resolution, resolution),  # (n, 3, H, W)
            "target_cached": [False] * len(target_images),
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
    (no context text). Examples whose target cannot fit ``llm.max_length`` are skipped
    and counted; longer contexts lose their oldest turns first (counted as truncated).
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
        latents: LatentMode = "auto",
        prefetch_factor: int = 2,
        pin_memory: Optional[bool] = None,
        persistent_val_workers: bool = False,
    ) -> None:
        super().__init__(
            train_shards, val_shards, batch_size, num_workers, shuffle_buffer, samples_per_epoch, val_samples, seed,
            stream_groups=stream_groups, model_config=model_config, latents=latents, prefetch_factor=prefetch_factor,
            pin_memory=pin_memory, persistent_val_workers=persistent_val_workers,
        )
        if targets not in ("last", "all") or context not in ("both", "text", "images"):
            raise ValueError(f"targets must be last|all and context both|text|images; got {targets!r}, {context!r}")
        self.targets, self.context = targets, context

    def make_encoder(self) -> InterleavedEncoder:
        return InterleavedEncoder(self.model_config, self.counter, self.targets, self.context, self.latents)
