"""Atomic file writes: every file the package writes (checkpoints, metrics, figures,
cached patches) goes to a temporary file in the same folder, then ``os.replace``s the
target, so a killed process never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


@contextmanager
def atomic_output(path: str | Path, *,
                  before_replace: Callable[[], object] | None = None) -> Iterator[Path]:
    """Yield the path of a temporary file next to ``path`` for the caller to fill (for
    writers that need a file name, e.g. ``numpy.lib.format.open_memmap``); on a normal
    exit it is fsynced and moved onto ``path``, on any error removed (``path`` untouched).
    ``before_replace()`` runs once the new file is complete, just before the move."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
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


def cache_root() -> Path:
    """Root of the on-disk caches of the DNN experiments (decoded CelebA, FID classifiers):
    ``$VSC_CACHE`` if set, else ``~/.cache/vsc``."""
    env = os.environ.get("VSC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vsc"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *,
                 before_replace: Callable[[], object] | None = None) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then move it onto ``path``;
    on any error the temporary file is removed and ``path`` is untouched.
    ``before_replace()`` runs once the new file is complete, just before the move."""
    path = Path(path)
    with atomic_output(path, before_replace=before_replace) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)
    return path
