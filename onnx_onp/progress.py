"""How the pipeline tells a front end what it is doing, without knowing whether anyone is watching.

The library calls ``stage`` when a step starts (with a count of units when it has one), ``advance`` as
units finish and ``note`` for one-line findings. ``Silent`` ignores all of it: the default, and what the
CLI uses with --quiet or when stderr is not a terminal (CI logs get no bars). ``TerminalProgress`` draws
one tqdm bar per stage on a terminal.
"""

from __future__ import annotations

import sys


class Silent:
    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1, **postfix) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class TerminalProgress(Silent):
    """A bar per stage on stderr; a stage without a count shows its elapsed time."""

    def __init__(self, stream=None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream or sys.stderr
        self._bar = None

    def stage(self, name: str, total: int | None = None) -> None:
        self.close()
        fmt = None if total else "{desc}: {elapsed}"
        self._bar = self._tqdm(total=total, desc=name, file=self._stream, leave=False, dynamic_ncols=True,
                               bar_format=fmt, mininterval=0.2)

    def advance(self, n: int = 1, **postfix) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(n)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def for_terminal(quiet: bool = False, stream=None) -> Silent:
    """Bars only when a person is watching: not with --quiet, not when stderr is a pipe or a file."""
    stream = stream or sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return Silent()
    return TerminalProgress(stream)
