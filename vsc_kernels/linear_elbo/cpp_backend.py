"""C++/OpenMP CPU backend of ``linear_elbo`` (``csrc/linear_elbo.cpp``).

Implements the forward contract :func:`vsc_kernels.linear_elbo.reference.squared_error`;
the backward is the shared :func:`~vsc_kernels.linear_elbo.reference.linear_elbo_backward`
(a few large matrix products that ATen already runs at GEMM speed). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference before
calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension



def squared_error(x, z, A):
    """Contract: ``x (B, D)``, ``z (B, J, d)``, ``A (D, d)`` of one dtype, any strides;
    returns ``E (B, J)`` in the compute dtype."""
    return _extension().linear_elbo_squared_error(x, z, A)
