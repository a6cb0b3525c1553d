"""A stream that says it is a terminal, for the progress-bar tests (an interactive stderr or stdout)."""

from __future__ import annotations

import io


class Terminal(io.StringIO):
    """Text written to it can be read back; ``isatty()`` is True, as on an interactive terminal."""

    def isatty(self) -> bool:
        return True
