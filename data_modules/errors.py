"""The error a sample raises when it cannot be used (counted and skipped by the readers)."""

from __future__ import annotations

from typing import Any


class BadSample(ValueError):
    """A sample that cannot be used, named by its shard url and key."""

    def __init__(self, sample: dict[str, Any], reason: str) -> None:
        super().__init__(f"{sample.get('__url__')} sample '{sample.get('__key__')}': {reason}")
