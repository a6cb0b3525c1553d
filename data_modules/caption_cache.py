"""Cached SD text-encoder output on captions (the CAP loss's target), beside the latent cache.

``minigpt5 data encode-latents --captions`` adds to each image-caption sample:

- ``key.caption_embedding.npy``: the frozen SD text encoder's output on the sample's
  caption, worded and tokenized as training does it (``template.normalise_captions``,
  ``diffusion.text_max_length``), ``(L, C)`` float32;
- ``key.caption_embedding.json``: what made it (:func:`caption_record`): the encoder's
  identity, the dtype it ran in, the token length and how captions were worded.

Stage 1 then takes the CAP target from the cache instead of running the text encoder in
the step: the same values, so the same loss. float32 holds the encoder's output exactly
for any dtype. Size per caption: ``L * C * 4`` bytes (77 x 1024 for SD 2.1: 308 KiB).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from data_modules.cache_records import CacheMode, read_array, usable_cache
from minigpt5.builders import text_encoder_name
from minigpt5.config import MiniGPT5Config

EMBEDDING_FIELD = "caption_embedding.npy"
CAPTION_RECORD_FIELD = "caption_embedding.json"


class CaptionCacheError(ValueError):
    """Cached caption embeddings that this run cannot use (missing where required, or made differently).

    Not a :class:`~data_modules.errors.BadSample`: it is never skipped, it stops training with the sample named.
    """


def caption_record(cfg: MiniGPT5Config) -> dict[str, Any]:
    """What a caption cache must have been made with to stand in for the text encoder under ``cfg``."""
    return {
        "text_encoder": text_encoder_name(cfg),
        "dtype": cfg.diffusion.torch_dtype,
        "max_length": cfg.diffusion.text_max_length,
        "captions": "normalised" if cfg.template.normalise_captions else "as written",
    }


def cached_caption_embedding(
    sample: dict[str, Any], expected: dict[str, Any], mode: CacheMode
) -> Optional[torch.Tensor]:
    """The cached text-encoder output (L, C) on ``sample``'s caption, or None when it must be computed.

    None when ``mode`` is "off" or (in "auto") the sample has no cache. Raises
    :class:`CaptionCacheError` for a cache made with another encoder, dtype, length or
    wording, or a sample without one in "require" mode; ``BadSample`` for a damaged one.
    """
    if not usable_cache(sample, CAPTION_RECORD_FIELD, expected, mode, what="caption embeddings",
                        setting="data.caption_embeddings", command="`minigpt5 data encode-latents --captions`",
                        error=CaptionCacheError):
        return None
    return read_array(sample, EMBEDDING_FIELD, "cached caption embeddings")


def collate_caption_embeddings(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch keys for the cached CAP targets of ``examples`` (see ``MiniGPT5.forward``): the
    embeddings of those that have one, and which those are when not all do."""
    cached = ["caption_embedding" in e for e in examples]
    if not any(cached):
        return {}
    batch = {"caption_embeddings": torch.stack([e["caption_embedding"] for e in examples if "caption_embedding" in e])}
    if not all(cached):
        batch["caption_cached"] = torch.tensor(cached)  # (B,)
    return batch
