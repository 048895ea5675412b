"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from actstat.errors import OutputError


def check_writable(path: Path | str) -> None:
    """An OutputError now if `write_atomic(path, ...)` could not work later: its directory is
    missing or not writable, or the path is a directory. Commands call it before measuring, so a
    typo in an output path costs no run."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise OutputError(f"{path}: directory '{directory}' {what}")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in '{directory}' (permission denied)")


def write_atomic(path: Path | str, text: str | bytes) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it into place.

    An interruption (Ctrl-C, a crash, a full disk) leaves `path` as it was; the temporary file
    is removed on any error.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{path}: directory '{directory}' does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot write in '{directory}' ({err.strerror})") from None
    try:
        binary = isinstance(text, bytes)
        with (os.fdopen(fd, "wb") if binary else
              os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write ({err.strerror})") from None
        raise
