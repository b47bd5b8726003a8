"""The project's exceptions.

``DebertrtError`` is a user-facing problem: its message is one line that names the fix,
and the CLI prints it and exits non-zero. ``InternalError`` is a broken invariant of
ours (a bug), and keeps its traceback.
"""


class DebertrtError(Exception):
    """Bad input or environment, explained in one line that says what to do."""


class InternalError(RuntimeError):
    """An invariant of debertrt itself failed."""


class NotRunnable(Exception):
    """An artifact this machine cannot run (a TensorRT engine without TensorRT or a suitable GPU);
    reports record the reason instead of results."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: what a one-line error quotes of a library's failure."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
