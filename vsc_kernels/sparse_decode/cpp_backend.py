"""C++/OpenMP CPU backend of ``sparse_decode`` (``csrc/sparse_decode.cpp``).

Same signatures, returns and semantics as the backend contract
:func:`vsc_kernels.sparse_decode.reference.decode` / ``grad_weight_t``; the kernels scan
``z`` directly (``nnz`` is not needed). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference
before calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension



def decode(z, At, nnz):
    """Contract: ``z (N, d) @ At (d, D)`` skipping z's zeros, in z's dtype."""
    return _extension().sparse_decode_forward(z, At)


def grad_weight_t(z, grad_out, nnz):
    """Contract: ``z^T @ grad_out`` -> ``(d, D)`` skipping z's zeros, in z's dtype."""
    return _extension().sparse_decode_grad_weight_t(z, grad_out)
