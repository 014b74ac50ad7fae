"""Atomic file writes: every file the package writes (checkpoints, metrics, figures,
cached patches) goes to a temporary file in the same folder, then ``os.replace``s the
target, so a killed process never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *,
                 before_replace: Callable[[], object] | None = None) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then move it onto ``path``;
    on any error the temporary file is removed and ``path`` is untouched.
    ``before_replace()`` runs once the new file is complete, just before the move."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary data files
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
