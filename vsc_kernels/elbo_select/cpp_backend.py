"""C++/OpenMP CPU backend of ``elbo_select`` (``csrc/elbo_select.cpp``).

Same signatures, returns and semantics as the backend contract in
:mod:`vsc_kernels.elbo_select.reference` (``squared_error`` /
``elbo_select_backward``). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference
before calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension

FUSED_METHODS = ("max", "avg", "iwae", "softmin")


def squared_error(x, x_hat):
    """Contract: ``x (B, F)``, ``x_hat (B, J, F)``; returns ``E (B, J)`` in the compute dtype."""
    return _extension().elbo_select_squared_error(x, x_hat)


def fused_forward(x, x_hat, kl, beta, scale, method):
    """``(loss, per_sample, index, weights)`` in the compute dtype: the squared errors and
    the selection over ``J`` (vsc_kernels._elbo's math) in one call."""
    return _extension().elbo_select_forward(x, x_hat, kl, float(beta), float(scale), method)


def elbo_select_backward(grad_sq_err, x, x_hat, need_x):
    """Contract: ``grad_x_hat (B, J, F)`` in ``x_hat.dtype``, ``grad_x (B, F)`` in ``x.dtype``
    or None (see the reference docstring)."""
    grad_x_hat, grad_x = _extension().elbo_select_backward(grad_sq_err, x, x_hat, bool(need_x))
    return grad_x_hat, grad_x
