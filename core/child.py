"""Run one stage in a child process, so that what it allocated goes back to the system when it ends.

CPython, glibc and protobuf keep much of what a stage freed (arenas, fragmented heaps, the ONNX
Runtime session's allocations): on a full-size model the process after the export or the rewrite
stays gigabytes above where it started, and every later stage starts from there. A child per
stage starts each one from a small process instead. Children come from a fork server (started
once, with the libraries imported) rather than a fresh interpreter, so a stage pays milliseconds
to start, not seconds of imports, and inherits none of the parent's heap.

The stage function and its arguments travel by pickle; its return value and a ``DebertrtError``
come back the same way; any other exception comes back as ``ChildError`` with the child's
traceback, and a child killed by a signal (the kernel's out-of-memory killer) is a one-line
``DebertrtError`` naming the fix.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback

from .errors import DebertrtError

# Imported once in the fork server: each child starts with them (shared, copy-on-write), instead of
# spending ~2 s importing torch and transformers to unpickle a stage's model description. A module
# missing here is only imported later, by the child that needs it.
PRELOAD = ["numpy", "onnx", "onnxruntime", "torch", "debertrt.core.onnx_utils", "debertrt.plugins.ort",
           "debertrt.core.artifacts", "debertrt.core.models", "debertrt.core.data",
           "transformers.models.deberta.configuration_deberta",
           "transformers.models.deberta_v2.configuration_deberta_v2",
           "transformers.models.deberta_v2.tokenization_deberta_v2_fast"]

_context = None


class ChildError(RuntimeError):
    """An unexpected exception in a child stage (a bug of ours): carries the child's traceback."""


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_in_child(what: str, function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a child process; its return value, or its exception raised here.

    ``what`` names the stage in the error a killed child gives."""
    from . import log

    context = _fork_server()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(send, log.verbosity(), function, args, kwargs),
                              name=f"debertrt-{what}")
    process.start()
    send.close()  # the parent's copy: EOF on ``receive`` once the child has gone
    try:
        message = receive.recv()
    except EOFError:
        message = None
    except BaseException:  # Ctrl-C here: the child goes too, no orphan keeps working
        process.kill()
        raise
    finally:
        receive.close()
        process.join()
    if message is None:
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = (" (most likely the out-of-memory killer: free memory, or use a machine with more)"
                    if -code == signal.SIGKILL else "")
            raise DebertrtError(f"the {what} stage's process was killed by {name}{hint}")
        raise DebertrtError(f"the {what} stage's process exited with code {code} without a result")
    kind, payload = message
    if kind == "ok":
        return payload
    if kind == "error":
        raise payload
    raise ChildError(f"the {what} stage failed in its child process:\n{payload}")


def _child_main(send, verbosity: int | None, function, args, kwargs) -> None:
    from . import log

    if verbosity is not None:
        log.configure(verbosity)
    try:
        message = ("ok", function(*args, **kwargs))
    except DebertrtError as exc:
        message = ("error", exc)
    except Exception:  # a bug: the parent raises it with this traceback
        message = ("bug", traceback.format_exc())
    try:
        send.send(message)
    except Exception:  # a result that does not pickle is a bug too
        send.send(("bug", traceback.format_exc()))
    finally:
        send.close()
