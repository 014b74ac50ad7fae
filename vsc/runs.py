"""Run-directory infrastructure shared by the trainers: one run per folder, checkpoints
that a crash cannot destroy, and a clean stop on Ctrl-C / SIGTERM.

* :class:`RunLock` -- ``with RunLock(out_dir):`` holds ``out_dir/run.lock`` for the
  run's lifetime. A second run (or ``vsc eval``) on the same folder refuses at once
  with :class:`RunLocked` naming the live holder's pid; a lock left by a killed run is
  recovered silently (the kernel drops the ``flock`` of a dead process; see
  :mod:`vsc_kernels._filelock`).
* :func:`save_checkpoint` -- writes ``checkpoint.pt`` atomically (temporary file,
  ``fsync``, ``os.replace``: :func:`vsc._io.atomic_write`) and keeps the checkpoint it
  replaces as ``checkpoint.prev.pt`` (a hard link made before the replace), so at every
  instant both names hold a complete checkpoint.
* :func:`load_checkpoint` -- policy for a truncated or corrupt checkpoint: it is
  renamed to ``checkpoint.pt.corrupt`` (kept for inspection, never rotated into
  ``.prev``), one line on stderr names it and the error, and the previous good
  checkpoint ``checkpoint.prev.pt`` is loaded instead (the run loses at most one
  checkpoint interval). If no readable checkpoint is left, :class:`CheckpointError`
  names every file tried. :func:`find_checkpoint` is what ``--resume`` looks for and
  raises :class:`NothingToResume` when the folder holds no checkpoint at all.
* :class:`StopOnSignal` -- ``with StopOnSignal() as stop:`` turns SIGINT and SIGTERM
  into ``stop.requested`` (checked by the loop between steps: save a checkpoint at the
  current step, then ``raise stop.interrupted(...)``); a second Ctrl-C raises
  ``KeyboardInterrupt`` at once. :func:`resume_command` prints the command that
  continues the run.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shlex
import shutil
import signal
import sys
import zipfile
from pathlib import Path

import torch

from vsc_kernels._filelock import LockBusy, PidLock, describe_holder, read_holder

from ._io import atomic_write

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
LOCK = "run.lock"


# --------------------------------------------------------------------------------------
# One run per folder
# --------------------------------------------------------------------------------------

class RunLocked(RuntimeError):
    """Another live process is running in (or evaluating) this folder."""


class RunLock:
    """Exclusive use of a run directory for the life of the ``with`` block."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self._lock = PidLock(self.out_dir / LOCK, timeout=0)

    def __enter__(self) -> "RunLock":
        try:
            self._lock.acquire()
        except LockBusy as busy:
            raise RunLocked(f"{self.out_dir} is in use by {describe_holder(busy.holder)}"
                            f"{_command(busy.holder)}; wait for it to finish or choose "
                            f"another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def check_free(out_dir: str | Path) -> None:
    """Raise :class:`RunLocked` now if a live process holds ``out_dir`` (an early check
    for a CLI; the run itself holds :class:`RunLock`)."""
    if Path(out_dir).is_dir():
        with RunLock(out_dir):
            pass


def _command(holder: dict | None) -> str:
    return f", running `{holder['command']}`" if holder and holder.get("command") else ""


def run_holder(out_dir: str | Path) -> dict | None:
    """Who holds ``out_dir``'s run lock (pid, host, since, command), if anyone."""
    return read_holder(Path(out_dir) / LOCK)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """No readable checkpoint: the message names each file and why it failed."""


class NothingToResume(FileNotFoundError):
    """``--resume`` on a folder that holds no checkpoint."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_changes(saved: dict, config, may_change=()) -> list[str]:
    """The fields that keep a run with ``config`` (a dataclass config) from resuming a
    checkpoint written with the config dict ``saved``: those whose values differ, except
    the fields in ``may_change``. A field the checkpoint lacks was added to the config after
    the checkpoint was written, and the version that wrote it behaved as the field's
    default, so it counts only when this run sets another value. A field the checkpoint has
    and this version does not know counts."""
    defaults = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    current = config.to_dict()
    changed = []
    for key in sorted(set(saved) | set(current)):
        if key in may_change:
            continue
        if key not in current or (key not in saved and key not in defaults):
            changed.append(key)
        elif saved.get(key, defaults.get(key)) != current[key]:
            changed.append(key)
    return changed


def save_checkpoint(state: dict, out_dir: str | Path, name: str = CHECKPOINT,
                    previous: str = PREVIOUS) -> Path:
    """Write ``state`` to ``out_dir/name`` atomically, keeping the replaced checkpoint as
    ``out_dir/previous``. Returns the checkpoint's path."""
    out_dir = Path(out_dir)
    path, prev = out_dir / name, out_dir / previous

    def keep_previous():  # the new checkpoint is complete: rotate the current one
        if not path.exists():
            return
        link = out_dir / f".{previous}.tmp"  # one writer per folder (RunLock)
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)  # a second name for it, then moved atomically
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(path, link)
        os.replace(link, prev)

    atomic_write(path, lambda handle: torch.save(state, handle), before_replace=keep_previous)
    _fsync_dir(out_dir)
    return path


def _read(path: Path, map_location):
    """``torch.load`` with every "this file is damaged" failure as one exception. The
    zip records' CRC-32 are checked first: ``torch.load`` itself reads a flipped byte in
    a tensor's data without complaint."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"CRC check failed for the record {damaged}")
        return torch.load(path, map_location=map_location, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, AttributeError, ImportError, IndexError, KeyError) as error:
        message = str(error).strip().splitlines()
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}: "
                              f"{message[0] if message else ''})") from error


def find_checkpoint(out_dir: str | Path, name: str = CHECKPOINT,
                    previous: str = PREVIOUS) -> Path:
    """The checkpoint ``--resume`` continues from (``previous`` only if ``name`` is gone);
    :class:`NothingToResume` if the folder holds neither."""
    out_dir = Path(out_dir)
    for candidate in (out_dir / name, out_dir / previous):
        if candidate.is_file():
            return candidate
    if not out_dir.is_dir():
        raise NothingToResume(f"--resume: {out_dir} does not exist; nothing to resume "
                              f"(drop --resume to start a new run)")
    raise NothingToResume(f"--resume: {out_dir} holds no checkpoint ({name}); nothing to "
                          f"resume (drop --resume to start a new run there)")


def load_checkpoint(out_dir: str | Path, *, map_location=None, name: str = CHECKPOINT,
                    previous: str = PREVIOUS, log=None) -> tuple[dict, Path]:
    """Load the newest readable checkpoint of ``out_dir``: ``(state, path)``.

    A damaged ``name`` is renamed to ``name + ".corrupt"``, reported through ``log``
    (default: one line on stderr) and ``previous`` is loaded instead. Raises
    :class:`NothingToResume` when there is no checkpoint, :class:`CheckpointError`
    when none is readable.
    """
    out_dir = Path(out_dir)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    first = find_checkpoint(out_dir, name, previous)
    try:
        return _read(first, map_location), first
    except CheckpointError as error:
        failure = error
    prev = out_dir / previous
    if first == prev or not prev.is_file():
        raise CheckpointError(f"{failure}; no previous checkpoint ({prev.name}) to fall back "
                              f"on: start a new run (another --out)") from failure.__cause__
    try:
        state = _read(prev, map_location)
    except CheckpointError as second:
        raise CheckpointError(f"{failure}; the previous one is unreadable too ({second}); "
                              f"start a new run (another --out)") from second.__cause__
    corrupt = first.with_name(first.name + ".corrupt")
    os.replace(first, corrupt)
    log(f"warning: {failure}; moved it to {corrupt.name} and resuming from the previous "
        f"good checkpoint {prev} instead")
    return state, prev


# --------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# --------------------------------------------------------------------------------------

class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; ``exit_code`` is the
    shell's convention (128 + signal number)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        where = f"checkpoint saved at step {step}: {checkpoint}" if checkpoint else \
            "no checkpoint written"
        super().__init__(f"stopped by {signal.Signals(signum).name}; {where}")


class StopOnSignal:
    """Within the ``with`` block, SIGINT and SIGTERM set :attr:`requested` (the signal
    number in :attr:`signum`) instead of killing the process; a second SIGINT raises
    ``KeyboardInterrupt`` (for a loop that stopped checking). The previous handlers
    come back on exit. A signal the process ignores (``nohup``, a background job of a
    script) stays ignored. Outside the main thread (where Python cannot install signal
    handlers) it installs nothing and :attr:`requested` stays False."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step "
              f"and saving a checkpoint (Ctrl-C again to abort without saving)",
              file=sys.stderr, flush=True)

    def interrupted(self, step: int, checkpoint: Path | None) -> Interrupted:
        return Interrupted(self.signum or signal.SIGINT, step, checkpoint)

    def __enter__(self) -> "StopOnSignal":
        try:
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup, a background job): keep it so
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self.__exit__()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def resume_command(argv: list[str], out_dir: str | Path, prog: str | None = None) -> str:
    """The shell command that continues a run started with ``prog argv``: the same
    arguments, ``--out out_dir`` (added if the run used the default) and ``--resume``.
    ``prog`` defaults to how this process was started (:func:`program`)."""
    prog = prog or program()
    args = list(argv)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out_dir)]
    if "--resume" not in args:
        args.append("--resume")
    return f"{prog} {shlex.join(args)}"   # prog as written (several words)


def program() -> str:
    """``python -m vsc.cli`` when this process runs the CLI as a module, else ``vsc``
    (the console script)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("vsc")
    return "python -m vsc.cli" if started.parts[-2:] == ("vsc", "cli.py") else "vsc"
