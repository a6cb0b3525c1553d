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

import io
import json
from typing import Any, Literal, Optional

import numpy as np
import torch

from data_modules.errors import BadSample
from minigpt5.builders import latent_space_name
from minigpt5.config import DiffusionConfig
from minigpt5.images import TARGET_TRANSFORM

LatentMode = Literal["off", "auto", "require"]  # ignore caches | use them where present | every sample needs one
LATENT_MODES = ("off", "auto", "require")
LATENT_SUFFIX = "latent.npy"
RECORD_FIELD = "latent.json"


class LatentCacheError(ValueError):
    """Cached latents that this run cannot use (missing where required, or made differently).

    Not a :class:`BadSample`: it is never skipped, it stops training with the sample named.
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


def moments_to_bytes(moments: np.ndarray) -> bytes:
    """(2c, h, w) float32 moments -> ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(moments, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def cached_moments(
    sample: dict[str, Any], image_fields: list[str], expected: dict[str, Any], mode: LatentMode
) -> Optional[torch.Tensor]:
    """The cached moments (n, 2c, h, w) of ``image_fields``, or None when the images must be encoded.

    None when ``mode`` is "off" or (in "auto") the sample has no cache. Raises
    :class:`LatentCacheError` for a cache made with another latent space, resolution or
    transform, or a sample without one in "require" mode; :class:`BadSample` for a
    damaged cache (a latent member missing or unreadable).
    """
    if mode == "off":
        return None
    where = f"{sample.get('__url__')} sample '{sample.get('__key__')}'"
    if RECORD_FIELD not in sample:
        if mode == "require":
            raise LatentCacheError(
                f"{where} has no cached latents (.{RECORD_FIELD}) but data.latents is 'require': write them with "
                "`minigpt5 data encode-latents`, or set data.latents to auto or off"
            )
        return None
    try:
        record = json.loads(sample[RECORD_FIELD])
    except ValueError as err:
        raise BadSample(sample, f"unreadable .{RECORD_FIELD}: {err}") from err
    differing = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if differing:
        detail = "; ".join(f"{k}: cache {made!r}, this run {want!r}" for k, (made, want) in differing.items())
        raise LatentCacheError(
            f"{where}: its latents were cached for another setup ({detail}). Re-encode the shards with "
            "`minigpt5 data encode-latents` and this run's model config, or set data.latents to off"
        )
    moments = []
    for field in image_fields:
        name = latent_field(field)
        if name not in sample:
            raise BadSample(sample, f"cached latents recorded but .{name} (for .{field}) is missing")
        try:
            moments.append(torch.from_numpy(np.load(io.BytesIO(sample[name]), allow_pickle=False)))
        except (ValueError, EOFError, OSError) as err:  # numpy's ways of rejecting a damaged .npy
            raise BadSample(sample, f"unreadable .{name}: {err}") from err
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
