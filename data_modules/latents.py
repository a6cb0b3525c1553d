"""Cached VAE latents in shards: the member layout, what made them, and reading them back.

``minigpt5 data encode-latents`` adds members next to each sample's images:

- ``key.latent.npy`` beside ``key.jpg`` (``key.0.latent.npy`` beside ``key.0.jpg`` in a
  story): the VAE encoder's Gaussian for that image, mean and log-variance stacked,
  ``(2c, h, w)`` float32;
- ``key.latent.json``: what made them (:func:`cache_record`): the latent space's
  identity, the dtype it ran in, the target resolution and the image transform.

Moments are stored rather than one sampled latent, so training still draws the latent
with its own generator: the same draw, and so the same loss, as encoding on the fly.
float32 holds the encoder's output exactly for any VAE dtype. Size per image:
``8 * (H / 8)**2 * 4`` bytes for SD's VAE (128 KiB at 512 px).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from data_modules.cache_records import CacheMode, read_array, usable_cache
from minigpt5.builders import latent_space_name
from minigpt5.config import DiffusionConfig
from minigpt5.images import TARGET_TRANSFORM

LATENT_SUFFIX = "latent.npy"
RECORD_FIELD = "latent.json"


class LatentCacheError(ValueError):
    """Cached latents that this run cannot use (missing where required, or made differently).

    Not a :class:`~data_modules.errors.BadSample`: it is never skipped, it stops training with the sample named.
    """


def latent_field(image_field: str) -> str:
    """The member holding an image's latent: ``jpg`` -> ``latent.npy``, ``0.jpg`` -> ``0.latent.npy``."""
    stem = image_field.rpartition(".")[0]
    return f"{stem}.{LATENT_SUFFIX}" if stem else LATENT_SUFFIX


def cache_record(cfg: DiffusionConfig) -> dict[str, Any]:
    """What a cache must have been made with to stand in for encoding under ``cfg``.

    The dtype is part of it: a VAE run in bfloat16 gives other moments than in float32.
    """
    return {
        "latent_space": latent_space_name(cfg),
        "dtype": cfg.torch_dtype,
        "resolution": cfg.resolution,
        "transform": TARGET_TRANSFORM,
    }


def cached_moments(
    sample: dict[str, Any], image_fields: list[str], expected: dict[str, Any], mode: CacheMode
) -> Optional[torch.Tensor]:
    """The cached moments (n, 2c, h, w) of ``image_fields``, or None when the images must be encoded.

    None when ``mode`` is "off" or (in "auto") the sample has no cache. Raises
    :class:`LatentCacheError` for a cache made with another latent space, resolution or
    transform, or a sample without one in "require" mode; :class:`BadSample` for a
    damaged cache (a latent member missing or unreadable).
    """
    if not usable_cache(sample, RECORD_FIELD, expected, mode, what="latents", setting="data.latents",
                        command="`minigpt5 data encode-latents`", error=LatentCacheError):
        return None
    moments = [read_array(sample, latent_field(f), f"cached latents (for .{f})") for f in image_fields]
    return torch.stack(moments)  # (n, 2c, h, w)


def collate_targets(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch keys for the targets of ``examples`` (see ``MiniGPT5.forward``).

    Each example holds ``target_cached`` (one bool per target image, in order) and
    ``target_pixels`` (the uncached ones) and/or ``target_moments`` (the cached ones).
    """
    cached = [flag for e in examples for flag in e["target_cached"]]
    batch: dict[str, torch.Tensor] = {}
    if not cached or not all(cached):
        batch["target_pixels"] = torch.cat([e["target_pixels"] for e in examples if "target_pixels" in e])
    if any(cached):
        batch["target_latent_moments"] = torch.cat([e["target_moments"] for e in examples if "target_moments" in e])
        if not all(cached):
            batch["target_cached"] = torch.tensor(cached)  # (N,)
    return batch
