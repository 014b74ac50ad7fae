"""An inter-process lock that a killed process can never leave behind.

:class:`PidLock` holds an exclusive ``flock`` on a file and writes the holder's pid,
host and start time into it (for messages only). The kernel drops an ``flock`` when
its process dies, however it dies, so a lock file left by a killed process is
recovered by the next ``acquire`` without any staleness guess (no pid-reuse race,
no timestamps). The file is removed on release; ``acquire`` checks after locking
that the path still names the file it locked, so a release racing with an acquire
can never give two holders.

Used by the C++ build (:mod:`vsc_kernels._extension`) and by training runs
(:mod:`vsc.runs`). POSIX only (``fcntl``), like the OpenMP build itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path


class LockBusy(RuntimeError):
    """The lock is held by a live process (``holder`` describes it, when readable)."""

    def __init__(self, path: Path, holder: dict | None, waited: float):
        self.path, self.holder, self.waited = path, holder, waited
        super().__init__(f"{path} is held by {describe_holder(holder)}")


def read_holder(path: str | Path) -> dict | None:
    """What the holder wrote into the lock file (pid, host, since, command), or None."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class PidLock:
    """``with PidLock(path, timeout=...):`` -- exclusive across processes.

    ``timeout=0`` fails at once with :class:`LockBusy` when a live process holds the
    lock; ``timeout=t`` waits up to ``t`` seconds (calling ``on_wait(holder)`` once,
    when the wait starts), ``None`` waits forever. Not re-entrant.
    """

    def __init__(self, path: str | Path, *, timeout: float | None = 0.0, poll: float = 0.2,
                 on_wait=None):
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self.on_wait = on_wait
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try_lock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:  # the holder we raced with may have removed the file: lock the new one
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self._try_lock()
        self._fd = fd
        return True

    def acquire(self) -> "PidLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        waiting = False
        while not self._try_lock():
            waited = time.monotonic() - start
            if self.timeout is not None and waited >= self.timeout:
                raise LockBusy(self.path, read_holder(self.path), waited)
            if not waiting and self.on_wait is not None:
                self.on_wait(read_holder(self.path))
            waiting = True
            time.sleep(self.poll)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps(holder).encode())
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter then locks a fresh file
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "PidLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
