"""Stage 2 (MLS): VIST stories and MMDialog dialogues as interleaved training examples.

A shard sample is one story or dialogue (as written by ``minigpt5 data vist|mmdialog``):
``key.json`` holds its steps/turns, ``key.0.jpg``, ``key.1.jpg``, ... its images. Each
sample expands into examples: the earlier turns are the context (text and, unless
``context="text"``, images as input-side images) and one turn is the target (its text,
and a voken block plus the target image per image). ``targets="last"`` makes one
example per sample (the last turn); ``"all"`` one per turn after the first.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Literal, Optional

import torch
from PIL import Image

from data_modules.base import ShardDataModule
from data_modules.shards import BadSample, SampleCounter
from minigpt5.builders import build_llm_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.sequences import SequenceTooLong, Turn, encode_interleaved, pad_examples
from minigpt5.vision import IMAGE_TOKEN, geometry, normalise_for_tower, tower_config

log = logging.getLogger(__name__)

Targets = Literal["last", "all"]
Context = Literal["both", "text", "images"]


def read_turns(sample: dict[str, Any]) -> list[tuple[str, list[Image.Image]]]:
    """A story or dialogue sample -> [(text, images)] in order; BadSample if unusable."""
    if "json" not in sample:
        raise BadSample(sample, "no .json sequence")
    try:
        record = json.loads(sample["json"])
    except ValueError as err:
        raise BadSample(sample, f"unreadable .json: {err}") from err
    if "steps" in record:  # VIST: one image per step
        raw = [(step.get("text", ""), [step["image"]]) for step in record["steps"]]
    elif "turns" in record:  # MMDialog: zero or more images per turn
        raw = [(turn.get("text", ""), list(turn.get("images", []))) for turn in record["turns"]]
    else:
        raise BadSample(sample, "json has neither 'steps' (VIST) nor 'turns' (MMDialog)")
    turns = []
    for text, names in raw:
        images = []
        for name in names:
            if name not in sample:
                raise BadSample(sample, f"image member '{name}' is missing")
            try:
                with Image.open(io.BytesIO(sample[name])) as im:
                    images.append(im.convert("RGB"))
            except Exception as err:  # PIL signals corrupt data with many exception types
                raise BadSample(sample, f"unreadable image '{name}': {err}") from err
        turns.append((text, images))
    return turns


class InterleavedEncoder:
    """Raw story/dialogue samples -> interleaved examples (``__call__``) -> batches (``collate``)."""

    def __init__(self, cfg: MiniGPT5Config, counter: SampleCounter, targets: Targets, context: Context) -> None:
        self.cfg, self.counter, self.targets, self.context = cfg, counter, targets, context
        self.tokenizer, self.voken_ids = build_llm_tokenizer(cfg)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.with_images = cfg.vision.kind != "none" and context != "text"
        self.tower_size, self.image_tokens = 0, 0
        if self.with_images:
            self.tower_size, self.image_tokens, _ = geometry(cfg.vision.kind, tower_config(cfg.vision))

    def _input_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Context images -> (m, 3, S, S) normalised for the vision tower."""
        if not images:
            return torch.zeros(0, 3, self.tower_size, self.tower_size)
        pixels = torch.stack([to_target_tensor(im, self.tower_size) for im in images])
        return normalise_for_tower(pixels, self.tower_size)

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        turns = read_turns(sample)
        if len(turns) < 2:
            raise BadSample(sample, f"{len(turns)} turn(s): need a context and a target")
        indices = range(1, len(turns)) if self.targets == "all" else [len(turns) - 1]
        resolution = self.cfg.diffusion.resolution
        examples = []
        for t in indices:
            context = [
                Turn(text if self.context != "images" else "", len(images) if self.with_images else 0)
                for text, images in turns[:t]
            ]
            target_text, target_images = turns[t]
            try:
                example = encode_interleaved(
                    self.tokenizer, context, Turn(target_text, len(target_images)), self.voken_ids,
                    image_token_id=self.image_token_id, image_tokens=self.image_tokens,
                    max_length=self.cfg.llm.max_length, prompt=self.cfg.prompt,
                )
            except SequenceTooLong as err:
                self.counter.note_skipped(sample, f"target turn {t}: {err}")
                continue
            if example.truncated:
                self.counter.note_truncated(sample)
            kept = [im for _, images in turns[example.first_context_turn:t] for im in images] if self.with_images else []
            examples.append({
                "example": example,
                "input_pixels": self._input_pixels(kept),  # (m, 3, S, S)
                "target_pixels": torch.stack([to_target_tensor(im, resolution) for im in target_images])
                if target_images else torch.zeros(0, 3, resolution, resolution),  # (n, 3, H, W)
            })
        return examples

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch ``MiniGPT5.forward`` reads: padded tokens, input and target images in order."""
        batch: dict[str, Any] = pad_examples([i["example"] for i in items], self.tokenizer.pad_token_id)
        batch["target_pixels"] = torch.cat([i["target_pixels"] for i in items])  # (N, 3, H, W)
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
        train_shards: str,
        val_shards: Optional[str] = None,
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
    ) -> None:
        super().__init__(train_shards, val_shards, batch_size, num_workers, shuffle_buffer, samples_per_epoch,
                         val_samples, seed, stream_groups=stream_groups, model_config=model_config)
        if targets not in ("last", "all") or context not in ("both", "text", "images"):
            raise ValueError(f"targets must be last|all and context both|text|images; got {targets!r}, {context!r}")
        self.targets, self.context = targets, context

    def make_encoder(self) -> InterleavedEncoder:
        return InterleavedEncoder(self.model_config, self.counter, self.targets, self.context)
