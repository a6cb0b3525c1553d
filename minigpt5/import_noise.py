"""Warnings optional packages print on import that say nothing about this project's work.

With torchao installed (the ``quant`` extra), importing diffusers prints one line from
diffusers (it looks for torchao classes that torchao 0.18 no longer has; they are only
needed to unpickle torchao-serialised checkpoints, which this project never reads) and
torchao's own import makes torch log two deprecation lines. Every ``minigpt5`` command
printed them. Each is dropped by its logger and its exact text, so any other message of
those loggers still shows.
"""

from __future__ import annotations

import logging

# logger name -> the text of the message dropped there
KNOWN_NOISE: dict[str, str] = {
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported by torch.compile",
}


class DropMessage(logging.Filter):
    """Drops records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def drop_known_import_noise() -> None:
    """Install the filters of :data:`KNOWN_NOISE` (once per logger)."""
    for name, text in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))
