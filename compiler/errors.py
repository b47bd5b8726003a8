"""The project's exceptions.

``DebertrtError`` is a user-facing problem: its message is one line that names the fix,
and the CLI prints it and exits non-zero. ``InternalError`` is a broken invariant of
ours (a bug), and keeps its traceback.
"""


class DebertrtError(Exception):
    """Bad input or environment, explained in one line that says what to do."""


class InternalError(RuntimeError):
    """An invariant of debertrt itself failed."""
