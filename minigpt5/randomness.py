"""Random draws from one generator for the batch, or from one generator per sample.

With a generator per sample, each sample's noise, timestep and guidance dropout depend
only on its own generator, not on which other samples share its batch: the same sample
draws the same noise whether the global batch runs on one process or is split over ranks.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def draw(sampler: Callable[..., torch.Tensor], shape: Sequence[int], generator: Generators, **kwargs) -> torch.Tensor:
    """``sampler(shape, generator=..., **kwargs)`` (e.g. ``torch.randn``), per sample when
    ``generator`` is a sequence: row ``i`` of the result comes from ``generator[i]``."""
    if generator is None or isinstance(generator, torch.Generator):
        return sampler(tuple(shape), generator=generator, **kwargs)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} samples")
    return torch.cat([sampler((1, *shape[1:]), generator=g, **kwargs) for g in generator])

