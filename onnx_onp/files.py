"""Writing output files whole or not at all (a temporary file beside the target, renamed over it)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from . import interrupts
from .errors import OutputError


def ordinary_permissions(path) -> None:
    """mkstemp creates 0600 files; an output should get what any new file gets under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


_written: list[Path] = []  # outputs completed by this process, removed if the run is interrupted later


def track_written(path) -> None:
    """An output written by other means than atomic_output (a model's external data file)."""
    _written.append(Path(path))


def forget_written() -> None:
    _written.clear()


def remove_written() -> list[Path]:
    """Delete the outputs this process wrote (an interrupted run must leave none); return those removed."""
    removed = []
    while _written:
        path = _written.pop()
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed.

    OSError becomes a one-line OutputError.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{path}: folder {directory} does not exist")
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        try:
            yield temporary
            interrupts.checkpoint()  # an interrupt swallowed while this file was written: do not publish it
            ordinary_permissions(temporary)
            os.replace(temporary, target)
            _written.append(target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def atomic_write_text(path, text: str) -> None:
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
