"""The import warnings minigpt5 drops (minigpt5/import_noise.py): gone after importing it, other messages kept."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pytest

from minigpt5.import_noise import KNOWN_NOISE, DropMessage, drop_known_import_noise

IMPORT_DIFFUSERS = "import diffusers.quantizers.torchao.torchao_quantizer, torchao"


def stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="the noise comes with torchao (quant extra)")
def test_importing_diffusers_with_torchao_is_quiet_after_minigpt5() -> None:
    # (without ``import minigpt5`` first, this process prints every text of KNOWN_NOISE)
    quiet = stderr_of("import minigpt5; " + IMPORT_DIFFUSERS)
    assert not any(text in quiet for text in KNOWN_NOISE.values()), quiet


def test_other_messages_of_those_loggers_still_show(caplog: pytest.LogCaptureFixture) -> None:
    drop_known_import_noise()
    drop_known_import_noise()  # installing twice adds no second filter
    for name, text in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        assert sum(isinstance(f, DropMessage) and f.text == text for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            logger.warning("something else %s", "happened")
            logger.warning("before " + text + " after")
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("something else happened") == len(KNOWN_NOISE)
    assert not any(text in m for m in messages for text in KNOWN_NOISE.values())
