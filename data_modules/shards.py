"""Shared reading of WebDataset shards in img2dataset layout.

A sample is ``key.jpg`` (or ``.jpeg``/``.png``/``.webp``) + ``key.txt`` caption
[+ ``key.json``]. Reading decodes each sample with our own map function; a sample
that cannot be used raises :class:`BadSample` naming its shard and key, and the
pipeline's :class:`SampleCounter` logs and counts it, then goes on.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import braceexpand
import torch
import webdataset as wds
from PIL import Image

from data_modules.cache_records import CacheMode
from data_modules.caption_cache import cached_caption_embedding, caption_record, collate_caption_embeddings
from data_modules.errors import BadSample
from data_modules.latents import cached_moments, cache_record, collate_targets
from minigpt5.builders import build_llm_tokenizer, build_sd_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.sequences import SequenceTooLong, pad_examples, tokenize_for_text_encoder
from minigpt5.templates import build_template, caption_conversations, prepare_caption
from minigpt5.vision import IMAGE_TOKEN

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


# ---- shard paths ----

def _split_top_level(spec: str) -> list[str]:
    """Split on commas outside braces, so ``a-{0,1}.tar,b.tar`` keeps its brace list."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return [p.strip() for p in parts if p.strip()]


ShardSpec = Union[str, Sequence[str]]


def expand_shards(spec: ShardSpec) -> list[str]:
    """Shard paths of ``spec``: brace patterns, directories (their ``*.tar``, sorted), comma
    lists, or a list of any of these (e.g. pairs, stories and dialogues together), in order.

    Raises FileNotFoundError naming every missing shard, ValueError if nothing is named.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for part in (p for s in specs for p in _split_top_level(s)):
        part = os.path.expanduser(part)
        if os.path.isdir(part):
            found = sorted(str(p) for p in Path(part).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"shard directory '{part}' (from spec '{spec}') holds no .tar files")
            urls.extend(found)
        else:
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise ValueError(f"shard spec '{spec}' names no shards")
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards in '{spec}' do not exist: " + ", ".join(missing)
        )
    return urls


# ---- bad samples ----

def _worker_name() -> str:
    info = torch.utils.data.get_worker_info()
    return "main process" if info is None else f"worker {info.id}"


class SampleCounter:
    """Counts and logs bad samples (as a wds handler), truncated sequences, skipped examples,
    and the turns a stage-2 reading leaves out (``turns_left_out``, of which ``dialogues_stopped``
    dialogues were cut short at a bad turn).

    Counts are per process: each DataLoader worker holds its own copy, so with
    ``num_workers > 0`` the running counts appear in the workers' log lines only.
    """

    def __init__(self) -> None:
        self.bad = 0
        self.truncated = 0
        self.skipped = 0
        self.turns_left_out = 0
        self.dialogues_stopped = 0

    def __call__(self, exn: Exception) -> bool:
        """wds handler: skip a :class:`BadSample` after logging it; re-raise anything else."""
        if not isinstance(exn, BadSample):
            raise exn
        self.bad += 1
        log.warning("skipped bad sample (%d so far in %s): %s", self.bad, _worker_name(), exn)
        return True

    def note_skipped(self, sample: dict[str, Any], reason: str) -> None:
        """One example of a sample could not be used (the sample's others still are)."""
        self.skipped += 1
        log.warning(
            "skipped an example (%d so far in %s): %s sample '%s': %s",
            self.skipped, _worker_name(), sample.get("__url__"), sample.get("__key__"), reason,
        )

    def note_turn_skipped(self, sample: dict[str, Any], turn: int, reason: str) -> None:
        """Turn ``turn`` of a sample was unusable (``reason``) and is left out; the others stay."""
        self.turns_left_out += 1
        log.warning(
            "skipped turn %d: %s (%d turns left out so far in %s): %s sample '%s'",
            turn, reason, self.turns_left_out, _worker_name(), sample.get("__url__"), sample.get("__key__"),
        )

    def note_stopped(self, sample: dict[str, Any], turn: int, reason: str, left_out: int) -> None:
        """A sample was cut short at its unusable turn ``turn`` (``reason``); ``left_out``: its turns unused from there."""
        self.dialogues_stopped += 1
        self.turns_left_out += left_out
        log.warning(
            "stopped at turn %d: %s; %d turns left out (%d so far, %d samples stopped, in %s): %s sample '%s'",
            turn, reason, left_out, self.turns_left_out, self.dialogues_stopped, _worker_name(),
            sample.get("__url__"), sample.get("__key__"),
        )

    def note_truncated(self, sample: dict[str, Any], limit: str = "llm.max_length") -> None:
        """A sample's sequence was cut to the length the setting ``limit`` allows."""
        self.truncated += 1
        log.warning(
            "sequence truncated to fit %s (%d so far in %s): %s sample '%s'",
            limit, self.truncated, _worker_name(), sample.get("__url__"), sample.get("__key__"),
        )


# ---- sample -> model inputs ----

def image_field(sample: dict[str, Any]) -> str:
    """The sample's image member (first of ``IMAGE_EXTENSIONS`` present); BadSample if none."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise BadSample(sample, f"no image (one of .{', .'.join(IMAGE_EXTENSIONS)})")
    return ext


def decode_caption(sample: dict[str, Any]) -> str:
    """The sample's ``.txt`` caption; BadSample if missing, not UTF-8 or empty."""
    if "txt" not in sample:
        raise BadSample(sample, "no caption (.txt)")
    try:
        caption = sample["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise BadSample(sample, f"caption is not UTF-8: {err}") from err
    if not caption:
        raise BadSample(sample, "empty caption")
    return caption


def decode_image(sample: dict[str, Any], field: str) -> Image.Image:
    """The RGB image in member ``field``; BadSample if it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(sample[field])) as im:
            return im.convert("RGB")
    except Exception as err:  # PIL signals corrupt data with many exception types
        raise BadSample(sample, f"unreadable .{field} image: {err.__class__.__name__}: {err}") from err


def decode_sample(sample: dict[str, Any]) -> tuple[Image.Image, str]:
    """Raw wds sample -> (RGB image, caption); :class:`BadSample` if either is missing or unreadable."""
    field = image_field(sample)
    caption = decode_caption(sample)
    return decode_image(sample, field), caption


class SampleEncoder:
    """Turns raw samples into model inputs (``__call__``) and lists of those into batches (``collate``).

    ``latents`` (see :mod:`data_modules.latents`): with "auto" or "require", a sample
    carrying cached latents gives its target as VAE moments and its image is not decoded.
    ``caption_embeddings`` (:mod:`data_modules.caption_cache`), likewise: a sample carrying
    its caption's text-encoder output gives it as the CAP target; "off" without a CAP loss.
    """

    def __init__(
        self, cfg: MiniGPT5Config, counter: SampleCounter, latents: CacheMode = "auto",
        caption_embeddings: CacheMode = "auto",
    ) -> None:
        self.cfg = cfg
        self.counter = counter
        self.latents = latents
        self.latent_record = cache_record(cfg.diffusion)
        self.caption_embeddings = caption_embeddings if cfg.loss.cap_weight > 0 else "off"
        self.caption_record = caption_record(cfg)
        self.tokenizer, self.voken_ids = build_llm_tokenizer(cfg)
        image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.template = build_template(cfg, self.tokenizer, self.voken_ids, image_token_id)
        self.sd_tokenizer = build_sd_tokenizer(cfg.diffusion)

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        """One raw sample -> its examples: the caption row, and an instruction row for one key
        in ``template.instruction_every`` (:func:`~minigpt5.templates.caption_conversations`)."""
        field = image_field(sample)
        caption = prepare_caption(decode_caption(sample), self.cfg.template)
        rows = caption_conversations(caption, sample.get("__key__", ""), self.cfg.template)
        examples = [self.template.encode(rows[0], self.cfg.llm.max_length)]
        for row in rows[1:]:
            try:
                examples.append(self.template.encode(row, self.cfg.llm.max_length))
            except SequenceTooLong as err:
                self.counter.note_skipped(sample, f"instruction row: {err}")
        if any(example.truncated for example in examples):
            self.counter.note_truncated(sample)
        target: dict[str, Any]
        moments = cached_moments(sample, [field], self.latent_record, self.latents)  # (1, 2c, h, w) or None
        if moments is None:
            pixels = to_target_tensor(decode_image(sample, field), self.cfg.diffusion.resolution)  # (3, H, W)
            target = {"target_pixels": pixels[None], "target_cached": [False]}
        else:
            target = {"target_moments": moments, "target_cached": [True]}
        embedding = cached_caption_embedding(sample, self.caption_record, self.caption_embeddings)  # (L, C) or None
        if embedding is not None:
            target["caption_embedding"] = embedding
        return [{"example": example, "caption": caption, **target} for example in examples]

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch ``MiniGPT5.forward`` reads, plus the caption strings."""
        captions = [s["caption"] for s in samples]
        batch: dict[str, Any] = pad_examples([s["example"] for s in samples], self.tokenizer.pad_token_id)  # (B, T)
        batch.update(collate_targets(samples))  # (B, 3, H, W) pixels and/or (B, 2c, h, w) moments
        batch["caption_ids"] = tokenize_for_text_encoder(
            self.sd_tokenizer, captions, self.cfg.diffusion.text_max_length
        )  # (B, 77)
        batch.update(collate_caption_embeddings(samples))  # (K, 77, C) cached CAP targets
        batch["captions"] = captions
        return batch


def example_length(item: dict[str, Any]) -> int:
    """Tokens of an encoded training input (either encoder's ``{"example": Example, ...}``)."""
    return len(item["example"].input_ids)


# ---- pipelines ----

def batches_per_worker(samples_per_epoch: int, batch_size: int, world_size: int, num_workers: int) -> int:
    """Batches each DataLoader worker yields per epoch so one epoch is about ``samples_per_epoch``.

    Each of ``world_size`` ranks runs ``max(1, num_workers)`` workers; rounded up, at least 1.
    """
    streams = world_size * max(1, num_workers)
    return max(1, math.ceil(samples_per_epoch / (streams * batch_size)))


def eval_pipeline(
    urls: list[str], encoder: SampleEncoder, *, batch_size: int, max_samples: Optional[int] = None
) -> wds.WebDataset:
    """Each shard read once, in order, split over ranks then workers; at most ``max_samples`` per worker."""
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
    dataset = dataset.map(encoder, handler=encoder.counter)
    if max_samples is not None:
        dataset = dataset.slice(max_samples)
    return dataset.compose(flatten).batched(batch_size, collation_fn=encoder.collate)


def flatten(lists: Iterator[list[Any]]) -> Iterator[Any]:
    """Pipeline stage: each sample's list of examples -> the examples."""
    for items in lists:
        yield from items
