"""The one logger: progress and notes go through ``logging.getLogger("debertrt")``; the CLI's
``-v``/``-q`` set its level. Results a command prints (summaries, paths) are its output, not logs."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("debertrt")

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
_verbosity = 0


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was at ``configure``:
    a caller may replace it in between (test capture, a redirect), and the old one may be closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns one; sys.stderr is read at emit time
        pass


def configure(verbosity: int = 0) -> None:
    """Log to stderr at WARNING (-q), INFO (default) or DEBUG (-v); idempotent."""
    global _verbosity
    _verbosity = max(-1, min(1, verbosity))
    level = LEVELS[_verbosity]
    logger.setLevel(level)
    if not any(getattr(h, "_debertrt", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._debertrt = True
        logger.addHandler(handler)
    logger.propagate = False


def verbosity() -> int | None:
    """What ``configure`` was given (None when it was not called): a child process logs the same way."""
    return _verbosity if any(getattr(h, "_debertrt", False) for h in logger.handlers) else None


def quiet() -> bool:
    """True after ``configure(-1)``: progress bars stay off too."""
    return _verbosity < 0
