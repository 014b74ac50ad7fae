"""Just-in-time build of the C++/OpenMP CPU backend (``csrc/*.cpp``).

Every ``csrc/*.cpp`` file is compiled into one module, ``vsc_kernels_cpu``
(``csrc/bindings.cpp`` holds its only ``PYBIND11_MODULE``), with
``torch.utils.cpp_extension.load``. The first build takes about half a minute;
torch keeps the result under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) and later processes load it in well under a
second, rebuilding only when a source or header changed.

If the build fails (no compiler, no OpenMP, ...), :func:`load_extension`
returns ``None`` after one ``RuntimeWarning`` and the callers fall back to the
PyTorch reference.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

EXTENSION_NAME = "vsc_kernels_cpu"
CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"

# -ffp-contract=off: no fused multiply-adds, so the float math rounds exactly as
# the separate PyTorch ops of the reference do. -fno-math-errno and
# -fno-trapping-math change no value (they let sqrt inline and the elementwise
# selects vectorize). No -march: the build stays portable; csrc/cpu_kernels_avx512.cpp
# and cpu_kernels_avx2.cpp compile the vectorized kernels for those instruction sets
# (target pragmas) and one is chosen at run time (see csrc/cpu_kernels.h).
EXTRA_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
EXTRA_LDFLAGS = ["-fopenmp"]


def _sources() -> list[str]:
    return [str(path) for path in sorted(CSRC_DIR.glob("*.cpp"))]


@functools.lru_cache(maxsize=None)
def load_extension():
    """The compiled module, or ``None`` (with one warning) when it cannot be built."""
    try:
        sources = _sources()
        if not sources:
            raise FileNotFoundError(f"no C++ sources found in {CSRC_DIR}")
        from torch.utils.cpp_extension import load

        return load(
            name=EXTENSION_NAME,
            sources=sources,
            extra_include_paths=[str(CSRC_DIR)],
            extra_cflags=EXTRA_CFLAGS,
            extra_ldflags=EXTRA_LDFLAGS,
            verbose=False,
        )
    except Exception as exc:  # no compiler, failed build, missing sources, ...
        warnings.warn(
            "vsc_kernels: the C++ CPU backend is unavailable "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}); "
            "the PyTorch reference implementation is used instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


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
