"""Whole-or-nothing file writes: a reader, or a run resumed after a kill, sees the old file
or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_atomic(path, write: Callable[[IO[bytes]], object], *, before_rename: Callable[[], None] | None = None) -> Path:
    """Calls ``write(f)`` on a binary temporary file beside ``path`` (``.<name>.*.tmp``),
    syncs it to disk, then renames it over ``path``; returns ``path``.

    before_rename: called between the sync and the rename (a test's crash point).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    """:func:`write_atomic` of ``text`` as UTF-8."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
