"""Just-in-time build of the C++/OpenMP CPU backend (``csrc/*.cpp``).

Every ``csrc/*.cpp`` file is compiled into one module, ``vsc_kernels_cpu``
(``csrc/bindings.cpp`` holds its only ``PYBIND11_MODULE``), with
``torch.utils.cpp_extension.load``, on first use. The sources are found in the
installed package (``vsc_kernels/csrc/``, where a wheel puts them) or, in a source
checkout, in the repository's top-level ``csrc/``.

Where the binary lives. One folder per binary, under ``TORCH_EXTENSIONS_DIR``
(default: torch's ``~/.cache/torch_extensions``), named after what determines it:
``vsc_kernels_cpu_<python tag>_torch<version>_<key>``, the key hashing the sources'
bytes, the compile flags, the torch build, the Python ABI and platform and ``$CXX``.
The sources are copied into the folder (``src/``) and compiled from there. Once a
build has succeeded, the folder gets a ``built`` stamp and later processes import the
module directly (no lock, no ninja), so every checkout, venv or installed wheel with
the same sources, torch build and Python shares one build and none rebuilds
another's (torch's ``load`` would rerun ninja, whose ``build.ninja`` records the
source, torch and Python paths of the caller, and recompile on every switch). Stale
folders of old sources are left in place (a few MB each); delete them freely. While
editing ``csrc/``, ``$VSC_KERNELS_BUILD_DIR`` pins one folder instead, in which ninja
recompiles only the changed files (the stamp then holds the key of the last build).

Locking. Builders take ``build.lock`` in that folder (an ``flock`` holding the
builder's pid, :mod:`vsc_kernels._filelock`): the kernel drops it when its process
dies, so a killed build never blocks the next one. While holding it, a leftover
``lock`` file of torch's own ``FileBaton`` (which torch would wait on forever) can
only come from a killed builder and is removed. A live builder is waited for at most
``$VSC_KERNELS_BUILD_TIMEOUT`` seconds (default 600), after which
:class:`BuildLockTimeout` names the lock, its holder and what to do. One line on
stderr announces a build (about 30 s on 2 cores; later processes load in well under
a second).

If the build fails (no compiler, no OpenMP, ...), :func:`load_extension` returns
``None`` after one ``RuntimeWarning`` and the callers fall back to the PyTorch
reference; a lock timeout is raised, not fallen back from.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

EXTENSION_NAME = "vsc_kernels_cpu"
BUILD_TIMEOUT_ENV = "VSC_KERNELS_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 600.0
BUILD_LOCK = "build.lock"
TORCH_BATON = "lock"  # torch.utils.file_baton.FileBaton's file in the build folder
BUILT_STAMP = "built"  # holds the build key once the module has been built and imported
BUILD_DIR_ENV = "VSC_KERNELS_BUILD_DIR"  # a fixed folder instead of the keyed one


def _find_csrc() -> Path:
    package_copy = Path(__file__).resolve().parent / "csrc"      # an installed wheel
    if any(package_copy.glob("*.cpp")):
        return package_copy
    return Path(__file__).resolve().parent.parent / "csrc"        # a source checkout


CSRC_DIR = _find_csrc()

# -ffp-contract=off: no fused multiply-adds, so the float math rounds exactly as
# the separate PyTorch ops of the reference do. -fno-math-errno and
# -fno-trapping-math change no value (they let sqrt inline and the elementwise
# selects vectorize). No -march: the build stays portable; csrc/cpu_kernels_avx512.cpp
# and cpu_kernels_avx2.cpp compile the vectorized kernels for those instruction sets
# (target pragmas) and one is chosen at run time (see csrc/cpu_kernels.h).
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
EXTRA_LDFLAGS = ["-fopenmp"]


class BuildLockTimeout(RuntimeError):
    """Another live process held the build lock for longer than the bound."""


def _source_files() -> list[Path]:
    return sorted(p for p in CSRC_DIR.iterdir() if p.suffix in (".cpp", ".h")) \
        if CSRC_DIR.is_dir() else []


def build_key() -> str:
    """Hex digest of everything the binary depends on."""
    import torch

    digest = hashlib.sha256()
    for part in (EXTENSION_NAME, *EXTRA_CFLAGS, "|", *EXTRA_LDFLAGS, "|",
                 torch.__version__, str(torch.version.git_version), str(torch.version.cuda),
                 str(getattr(torch.version, "hip", None)), sys.implementation.cache_tag,
                 getattr(sys, "abiflags", ""), str(sysconfig.get_config_var("EXT_SUFFIX")),
                 sysconfig.get_platform(), os.environ.get("CXX", "")):
        digest.update(part.encode() + b"\0")
    for path in _source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_directory() -> Path:
    """The folder that holds (or will hold) this binary: ``$VSC_KERNELS_BUILD_DIR`` if
    set, else a folder of ``$TORCH_EXTENSIONS_DIR`` named after the build key."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get(BUILD_DIR_ENV):
        return Path(os.environ[BUILD_DIR_ENV]).expanduser().resolve()

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{sys.implementation.cache_tag}_torch{torch.__version__}")
    return Path(root) / f"{EXTENSION_NAME}_{tag}_{build_key()[:16]}"


def _build_timeout() -> float:
    text = os.environ.get(BUILD_TIMEOUT_ENV, "")
    try:
        return float(text) if text else DEFAULT_BUILD_TIMEOUT
    except ValueError:
        raise ValueError(f"${BUILD_TIMEOUT_ENV} must be a number of seconds, got {text!r}") \
            from None


def _stage_sources(folder: Path) -> list[Path]:
    """Copy the sources into ``folder`` (rewriting only files whose bytes differ, each
    atomically) and return the ``.cpp`` files to compile."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for path in _source_files():
        target = folder / path.name
        data = path.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        if target.suffix == ".cpp":
            staged.append(target)
    return staged


def _say(message: str) -> None:
    print(f"vsc_kernels: {message}", file=sys.stderr, flush=True)


def _import(folder: Path):
    path = folder / f"{EXTENSION_NAME}.so"
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built(folder: Path, key: str) -> bool:
    try:
        return (folder / BUILT_STAMP).read_text() == key
    except OSError:
        return False


def build_and_load():
    """Import the module, building it first (under the build lock) if this folder holds
    no finished build yet."""
    import torch  # noqa: F401  (the module links against the loaded libtorch)

    if not _source_files():
        raise FileNotFoundError(f"no C++ sources found in {CSRC_DIR}")
    folder = build_directory()
    key = build_key()
    if _built(folder, key):
        return _import(folder)  # finished once, never rewritten: no lock, no ninja
    from ._filelock import LockBusy, PidLock, describe_holder  # POSIX: elsewhere, no build

    lock_path = folder / BUILD_LOCK
    timeout = _build_timeout()
    lock = PidLock(lock_path, timeout=timeout, on_wait=lambda holder: _say(
        f"waiting for {describe_holder(holder)}, which is building the C++ kernels in "
        f"{folder} (at most {timeout:.0f} s)"))
    try:
        lock.acquire()
    except LockBusy as busy:
        pid = (busy.holder or {}).get("pid")
        raise BuildLockTimeout(
            f"vsc_kernels: waited {busy.waited:.0f} s for {describe_holder(busy.holder)} to "
            f"finish building the C++ kernels (lock file {lock_path}). If that process is "
            f"hung, end it{f' (kill {pid})' if pid else ''} and call again: its lock goes "
            f"with it. Or wait longer (${BUILD_TIMEOUT_ENV}=seconds), or run without the C++ "
            f"kernels (VSC_KERNELS_BACKEND=reference).") from None
    try:
        if _built(folder, key):  # built while we waited
            return _import(folder)
        from torch.utils.cpp_extension import load

        sources = _stage_sources(folder / "src")
        baton = folder / TORCH_BATON
        if baton.exists():  # we hold build.lock: its torch builder was killed
            baton.unlink()
            _say(f"removed {baton}, left by a build that was killed")
        _say(f"building the C++ kernels once, about 30 s (cached in {folder})")
        module = load(name=EXTENSION_NAME, sources=[str(s) for s in sources],
                      extra_include_paths=[str(folder / "src")],
                      # copies: torch appends its own -L/-l flags to the list it is given
                      extra_cflags=list(EXTRA_CFLAGS), extra_ldflags=list(EXTRA_LDFLAGS),
                      build_directory=str(folder), verbose=False)
        (folder / BUILT_STAMP).write_text(key)
        return module
    finally:
        lock.release()


_load_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _load_once():
    try:
        return build_and_load()
    except BuildLockTimeout:
        raise  # not cached: a later call tries again
    except Exception as exc:  # no compiler, failed build, missing sources, ...
        lines = str(exc).strip().splitlines()
        warnings.warn(
            "vsc_kernels: the C++ CPU backend is unavailable "
            f"({type(exc).__name__}: {lines[-1] if lines else repr(exc)}); "
            "the PyTorch reference implementation is used instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def load_extension():
    """The compiled module, or ``None`` (with one warning) when it cannot be built.
    Raises :class:`BuildLockTimeout` when another process's build outlasts the bound."""
    with _load_lock:
        return _load_once()


def require_extension():
    """The loaded extension, for the ``cpp_backend`` modules (the dispatcher has already
    fallen back to the reference if the build failed)."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError("vsc_kernels: the C++ CPU backend is unavailable (build failed)")
    return ext


def cpp_available() -> bool:
    """Whether the C++ backend builds and loads (builds it on first call)."""
    return load_extension() is not None
