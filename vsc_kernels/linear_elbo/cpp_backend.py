"""C++/OpenMP CPU backend of ``linear_elbo`` (``csrc/linear_elbo.cpp``).

Implements the forward contract :func:`vsc_kernels.linear_elbo.reference.squared_error`,
a fused forward (the squared errors and the selection over ``J`` in one call, for the
methods the C++ selection knows), and the backward contract
:func:`~vsc_kernels.linear_elbo.reference.linear_elbo_backward` in C++ with the same blocks as the
reference but the residuals ``g (x_b - A z_bj)`` from the C++ kernel (which adds only the
rows of ``A^T`` for the codes' non-zeros when they are sparse, at most 25% non-zeros) and,
for sparse codes, ``grad_A`` from the sparse ``z^T @ (g r)`` of ``csrc/sparse_decode.cpp``;
``grad_z`` is one dense product (the straight-through estimator needs every entry). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference before
calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension
from . import reference

FUSED_METHODS = ("max", "avg", "iwae", "softmin")


def squared_error(x, z, A):
    """Contract: ``x (B, D)``, ``z (B, J, d)``, ``A (D, d)`` of one dtype, any strides;
    returns ``E (B, J)`` in the compute dtype."""
    return _extension().linear_elbo_squared_error(x, z, A, reference.CHUNK_ELEMENTS)


def fused_forward(x, z, A, kl, beta, scale, method):
    """``(loss, per_sample, index, weights)`` in the compute dtype (vsc_kernels._elbo's math)."""
    return _extension().linear_elbo_forward(x, z, A, kl, float(beta), float(scale), method,
                                            reference.CHUNK_ELEMENTS)


def linear_elbo_backward(grad_E, index, x, z, A, need_x, need_z, need_A):
    """The backward contract of :func:`reference.linear_elbo_backward` (same blocks, same
    results up to rounding) in one C++ call: residuals from the sparse-aware kernel, ``grad_z``
    one product per block, ``grad_A`` over the codes' non-zeros when they are sparse."""
    return _extension().linear_elbo_backward(grad_E, index, x, z, A, bool(need_x), bool(need_z),
                                             bool(need_A), reference.CHUNK_ELEMENTS)
