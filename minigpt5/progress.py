"""Progress bars for the long commands: one tqdm bar with counts and rates, shown only where a
person watches it (a terminal) and not under ``--no-progress``; a log file gets no bar lines.

Every command that runs long takes the same flag (:func:`add_progress_flag`) and draws its bar
with :func:`progress_bar`; the Lightning commands map the same rule onto
``trainer.enable_progress_bar`` (:mod:`lit_models.lightning_cli`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional, TextIO

from tqdm import tqdm

NO_PROGRESS = "--no-progress"
NO_PROGRESS_HELP = "no progress bar (there is none either when the output is not a terminal, e.g. a log file)"


def shows_progress(enabled: bool = True, stream: Optional[TextIO] = None) -> bool:
    """Whether a bar shows: it is ``enabled`` and ``stream`` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return enabled and callable(isatty) and bool(isatty())


def progress_bar(
    iterable: Optional[Iterable] = None, *, desc: str, unit: str, total: Optional[float] = None, enabled: bool = True
) -> tqdm:
    """A tqdm bar on stderr over ``iterable`` (or moved by ``update``): the count and rate, and
    with a total (given, or the iterable's length) the share done and the time left. Unless
    :func:`shows_progress`, it is a silent pass-through whose ``update``/``set_postfix`` do nothing."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True,
                disable=not shows_progress(enabled))


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` on ``parser``: ``args.progress`` is False when given."""
    parser.add_argument(NO_PROGRESS, dest="progress", action="store_false", help=NO_PROGRESS_HELP)
