"""Backend selection: by device, overridable by argument or environment variable.

* ``"reference"``: plain PyTorch (any device), the oracle.
* ``"triton"``: Triton kernels for CUDA tensors (CPU tensors only under
  ``TRITON_INTERPRET=1``, which is how the CPU test suite runs them).
* ``"cpp"``: the compiled C++/OpenMP kernels in ``csrc/`` for CPU tensors, built on
  first use; if it cannot be built, the reference runs instead (one warning).

``backend=None`` reads ``VSC_KERNELS_BACKEND``; unset or ``"auto"`` picks Triton
for CUDA tensors and C++ for CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

BACKENDS = ("reference", "triton", "cpp")
BACKEND_ENV = "VSC_KERNELS_BACKEND"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def cpp_available() -> bool:
    from ._extension import load_extension

    return load_extension() is not None


# Resolved backends by (requested, device type, $VSC_KERNELS_BACKEND, $TRITON_INTERPRET):
# eager calls pay a dict lookup, not the checks below (the environment is part of the key,
# so changing it at run time still takes effect).
_RESOLVED: dict[tuple, str] = {}


def resolve_backend_cached(requested: str | None, device_type: str) -> str:
    """:func:`resolve_backend` for eager calls: the decision is cached."""
    environ = os.environ
    key = (requested, device_type, environ.get(BACKEND_ENV), environ.get("TRITON_INTERPRET"))
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _resolve(requested, device_type)
        _RESOLVED[key] = chosen
    return chosen


@torch.compiler.assume_constant_result
def resolve_backend(requested: str | None, device_type: str) -> str:
    """The backend that runs on tensors of ``device_type`` (a constant for torch.compile)."""
    return resolve_backend_cached(requested, device_type)


def _resolve(requested: str | None, device_type: str) -> str:
    name = requested if requested is not None else os.environ.get(BACKEND_ENV, "auto")
    if not isinstance(name, str) or name not in BACKENDS + ("auto",):
        source = "backend" if requested is not None else f"${BACKEND_ENV}"
        raise ValueError(f"{source} must be one of {BACKENDS + ('auto',)}, got {name!r}")
    if name == "auto":
        if device_type == "cuda":
            return "triton" if triton_installed() else "reference"
        if device_type == "cpu":
            return "cpp" if cpp_available() else "reference"
        return "reference"
    if name == "triton":
        if not triton_installed():
            raise ValueError("backend='triton' needs the triton package, which is not installed")
        if device_type != "cuda" and not (device_type == "cpu" and triton_interpreted()):
            raise ValueError(f"backend='triton' runs on CUDA tensors (or on CPU tensors under "
                             f"TRITON_INTERPRET=1), got {device_type} tensors")
    if name == "cpp":
        if device_type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got {device_type} tensors")
        if not cpp_available():
            return "reference"
    return name


@functools.lru_cache(maxsize=None)
def backend_module(op: str, backend: str):
    """The module implementing ``op``'s backend contract (imported lazily, so that
    Triton is never imported on a machine that does not use it)."""
    module = {"reference": "reference", "triton": "triton_kernels", "cpp": "cpp_backend"}[backend]
    return importlib.import_module(f"vsc_kernels.{op}.{module}")
