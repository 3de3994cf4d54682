"""Ctrl-C and SIGTERM that cannot be lost.

Python runs a signal handler at the next bytecode boundary of the main thread; when that happens inside a weakref
callback or a ``__del__`` (the import system's module-lock callback is one), the KeyboardInterrupt it raises is
printed as "Exception ignored" and dropped, and the run goes on to write its outputs. The CLI's handlers therefore
also *record* the signal here, and the pipeline's checkpoints (each stage, each output file) raise it again.
"""

from __future__ import annotations

import signal
import sys

from .errors import Terminated

_pending: KeyboardInterrupt | None = None


def record(signum: int) -> KeyboardInterrupt:
    """Remember that ``signum`` arrived; return the exception its handler raises."""
    global _pending
    _pending = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    return _pending


def pending() -> KeyboardInterrupt | None:
    return _pending


def clear() -> None:
    global _pending
    _pending = None


def checkpoint() -> None:
    """Raise the recorded interrupt if one arrived and was swallowed on the way."""
    if _pending is not None:
        raise _pending


def quiet_unraisable(previous_hook):
    """An unraisable-exception hook that stays silent on the interrupts recorded above (the checkpoints report
    them in one line) and passes everything else to ``previous_hook``."""
    def hook(unraisable):
        if _pending is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous_hook(unraisable)
    return hook


def install() -> tuple:
    """Handlers for SIGINT and SIGTERM in the main thread; returns what ``restore`` needs."""
    def handler(signum, frame):
        raise record(signum)

    saved = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and current == signal.SIG_IGN:
                continue  # started in the background with Ctrl-C ignored: keep it so
            saved.append((sig, signal.signal(sig, handler)))
        except ValueError:  # not the main thread (an embedding application): leave its handlers alone
            return ()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = quiet_unraisable(previous_hook)
    return tuple(saved) + ((None, previous_hook),)


def restore(saved: tuple) -> None:
    for sig, previous in saved:
        if sig is None:
            sys.unraisablehook = previous
        elif previous is not None:
            signal.signal(sig, previous)
    clear()
