"""Offloading: parts that run only now and then (SD's UNet, VAE and text encoder, the vision
tower) wait on the CPU and move to the execution device only for their use.

At paper size the UNet, VAE and text encoder hold about 1.7 GB in bf16, the BLIP-2 tower
about 2 GB; generation needs them for a few seconds per image, the LLM for every token. With
offloading only the LLM and the small trainable parts stay resident, and the largest
offloaded part (or group used together) is the most that joins them.

On a CPU-only machine both devices are the CPU: every move is a no-op, but the same calls
run, and :attr:`Offloader.moves` records them (the tests read it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

import torch
from torch import nn

Device = Union[str, torch.device]


class Offloader:
    """Moves the parts it was given to the execution device for a use, and back to ``storage`` after."""

    def __init__(self, parts: dict[str, nn.Module], storage: Device = "cpu") -> None:
        self.names = {id(part): name for name, part in parts.items()}
        self.storage = torch.device(storage)
        self.moves: list[tuple[str, str]] = []  # (part, device) of every move, in order
        for part in parts.values():
            self._move(part, self.storage)

    def _move(self, part: nn.Module, device: torch.device) -> None:
        self.moves.append((self.names[id(part)], str(device)))
        part.to(device)

    @contextmanager
    def using(self, parts: tuple[nn.Module, ...], device: Device) -> Iterator[None]:
        """Run the body with ``parts`` on ``device``; those this offloader keeps go back to storage after."""
        kept = [part for part in parts if id(part) in self.names]
        for part in kept:
            self._move(part, torch.device(device))
        try:
            yield
        finally:
            for part in kept:
                self._move(part, self.storage)
