"""C++/OpenMP CPU backend of ``fista`` (``csrc/fista.cpp``).

Same signature, returns and semantics as the backend contract
:func:`vsc_kernels.fista.reference.fista_solve`. The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference
before calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension



def fista_solve(gram, c, lam, z0, lipschitz, max_iter, tol, nonneg, A=None):
    """Contract: ``gram (d, d)``, ``c (B, d)``, ``lam (B,)``, ``z0 (B, d)`` in the compute
    dtype; returns ``codes (B, d)`` (that dtype), ``n_iter (B,)`` int32, ``converged (B,)``
    bool. With ``A (D, d)`` the gradient's product ``y G`` is computed as ``(y A^T) A``
    (cheaper when ``d > 2 D``; ``gram`` is then unused)."""
    codes, n_iter, converged = _extension().fista_solve(
        gram, c, lam, z0, float(lipschitz), int(max_iter), float(tol), bool(nonneg), A)
    return codes, n_iter, converged
