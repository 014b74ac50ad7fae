"""C++/OpenMP CPU backend of ``sparse_decode`` (``csrc/sparse_decode.cpp``).

Same signature, return and semantics as the backend contract
:func:`vsc_kernels.sparse_decode.reference.csr_spmm`. The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference
before calling into this module.
"""

from __future__ import annotations

from .._extension import load_extension


def _extension():
    ext = load_extension()
    if ext is None:
        raise RuntimeError("vsc_kernels: the C++ CPU backend is unavailable (build failed)")
    return ext


def csr_spmm(crow, col, val, dense):
    """Contract: ``crow (R + 1,)``, ``col (nnz,)`` int64, ``val (nnz,)`` and ``dense (K, Dn)``
    of one float dtype; returns ``out (R, Dn)`` in that dtype."""
    return _extension().csr_spmm(crow, col, val, dense)
