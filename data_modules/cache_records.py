"""What the shard caches share: per-sample arrays stored as ``.npy`` members, and a record of
what made them that a run checks before it uses them.

Two caches follow this layout: VAE moments (:mod:`data_modules.latents`) and the SD text
encoder's output on captions (:mod:`data_modules.caption_cache`). Each has its own
``data.*`` setting with these modes.
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np
import torch

from data_modules.errors import BadSample

CacheMode = Literal["off", "auto", "require"]  # ignore caches | use them where present | every sample needs one
CACHE_MODES = ("off", "auto", "require")


def array_to_bytes(array: np.ndarray) -> bytes:
    """A float32 array -> ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_array(sample: dict[str, Any], name: str, what: str) -> torch.Tensor:
    """The ``.npy`` member ``name`` of ``sample``; :class:`BadSample` when it is missing or damaged
    (``what``: the cache and member it stands for, for the message)."""
    if name not in sample:
        raise BadSample(sample, f"{what} recorded but .{name} is missing")
    try:
        return torch.from_numpy(np.load(io.BytesIO(sample[name]), allow_pickle=False))
    except (ValueError, EOFError, OSError) as err:  # numpy's ways of rejecting a damaged .npy
        raise BadSample(sample, f"unreadable .{name}: {err}") from err


def usable_cache(
    sample: dict[str, Any], record_field: str, expected: dict[str, Any], mode: CacheMode, *,
    what: str, setting: str, command: str, error: type[ValueError],
) -> bool:
    """Whether ``sample``'s cache, recorded in member ``record_field``, is to be read.

    False when ``mode`` is "off" or (in "auto") the sample has no record. Raises ``error``
    naming the sample for a sample without a record in "require" mode, and for a record that
    differs from ``expected`` (naming each field, as cached and as this run needs it);
    :class:`BadSample` for an unreadable record. ``what`` names the cache ("latents"),
    ``setting`` the option that sets ``mode`` and ``command`` the one that writes the cache.
    """
    if mode == "off":
        return False
    where = f"{sample.get('__url__')} sample '{sample.get('__key__')}'"
    if record_field not in sample:
        if mode == "require":
            raise error(
                f"{where} has no cached {what} (.{record_field}) but {setting} is 'require': write them with "
                f"{command}, or set {setting} to auto or off"
            )
        return False
    try:
        record = json.loads(sample[record_field])
    except ValueError as err:
        raise BadSample(sample, f"unreadable .{record_field}: {err}") from err
    differing = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if differing:
        detail = "; ".join(f"{k}: cache {made!r}, this run {want!r}" for k, (made, want) in differing.items())
        raise error(
            f"{where}: its {what} were cached for another setup ({detail}). Re-encode the shards with "
            f"{command} and this run's model config, or set {setting} to off"
        )
    return True
