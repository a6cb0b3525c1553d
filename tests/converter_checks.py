"""Helpers of the converters' tests: small images written in code, shards read back as samples,
logged problems checked, converted shards read by the interleaved DataModule, ``--help`` read."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import pytest
import webdataset as wds
from PIL import Image

from data_modules.convert.common import SequenceSummary
from data_modules.interleaved import InterleavedDataModule
from lit_models.cli import main as minigpt5_main
from minigpt5.config import MiniGPT5Config


def read_shards(spec: str, decode: bool = False) -> list[dict]:
    """Every sample of the shards ``spec`` in order (raw bytes, or with ``decode`` images as PIL)."""
    dataset = wds.WebDataset(spec, shardshuffle=False, empty_check=False)
    return list(dataset.decode("pil") if decode else dataset)


def write_image(path: Path, colour: str, fmt: str = "JPEG") -> None:
    """A 12x10 image of one ``colour`` at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path, format=fmt)


def assert_logged(records: list[logging.LogRecord], expected: list[tuple[str, str]]) -> None:
    """Each (where, what) of ``expected`` is in a logged message that starts ``where:`` and holds ``what``."""
    messages = [r.getMessage() for r in records]
    for where, what in expected:
        assert any(m.startswith(where + ":") and what in m for m in messages), (where, what)


def interleaved_batches(spec: str, cfg: MiniGPT5Config, **kwargs: Any) -> tuple[InterleavedDataModule, list[dict]]:
    """The interleaved DataModule over ``spec`` (no workers, batches of 64) and its validation batches."""
    dm = InterleavedDataModule(spec, spec, model_config=cfg, num_workers=0, batch_size=64, **kwargs)
    dm.setup("fit")
    return dm, list(dm.val_dataloader())


def help_text(words: list[str], capsys: pytest.CaptureFixture) -> str:
    """What ``minigpt5 WORDS --help`` prints; it must exit with status 0."""
    with pytest.raises(SystemExit) as exit_:
        minigpt5_main([*words, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


WRONG_VALUES = [None, 5, -1, 1.5, True, "x", "", [], [1], {}, {"a": 1}, "user"]


def assert_wrong_values_counted(
    good: dict, setters: dict[str, Callable[[dict, Any], None]], convert: Callable[[Path, Path], SequenceSummary],
    folder: Path,
) -> None:
    """Each of :data:`WRONG_VALUES`, put in a copy of the record ``good`` by each of ``setters``, on a
    jsonl line before ``good``: ``convert(jsonl, out)`` reads both lines, writes or skips (counted)
    each, and writes one at least; never a traceback."""
    for where, setter in setters.items():
        for n, value in enumerate(WRONG_VALUES):
            broken = json.loads(json.dumps(good))
            setter(broken, value)
            path = folder / f"{where}-{n}.jsonl"
            path.write_text(json.dumps(broken) + "\n" + json.dumps(good) + "\n")
            summary = convert(path, folder / f"out-{where}-{n}")
            assert summary.read == 2 and summary.written + sum(summary.skipped.values()) == 2, (where, value)
            assert summary.written >= 1, (where, value)
