"""C++/OpenMP CPU backend of ``threshold_sample`` (``csrc/threshold_sample.cpp``).

Same signatures, returns and semantics as the backend contract in
:mod:`vsc_kernels.threshold_sample.reference` (``threshold_sample_forward`` /
``threshold_sample_backward``). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference
before calling into this module.
"""

from __future__ import annotations

from .._extension import require_extension as _extension


def _lam_value(lam_value) -> float:
    # Only read when lam is None; a caller passing a tensor lam may leave it as None.
    return 0.0 if lam_value is None else float(lam_value)



def threshold_sample_forward(mu, logb, lam, lam_value, seed, num_samples, base, warmup,
                             return_kl, prior_scale):
    """Contract: ``mu, logb (M, d)``; ``lam`` None or an ``(M, J, d)`` view; returns
    ``z (M, J, d)`` contiguous in ``mu.dtype`` and ``kl (M,)`` in the compute dtype (or None)."""
    z, kl = _extension().threshold_sample_forward(
        mu, logb, lam, _lam_value(lam_value), seed, int(num_samples), str(base), float(warmup),
        bool(return_kl), float(prior_scale))
    return z, kl


def threshold_sample_backward(grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples,
                              base, estimator, warmup, prior_scale, lam_requires_grad):
    """Contract: returns ``grad_mu, grad_logb`` ``(M, d)`` in ``mu.dtype`` and ``grad_lam
    (M, J, d)`` in the compute dtype or None (see the reference docstring)."""
    grad_mu, grad_logb, grad_lam = _extension().threshold_sample_backward(
        grad_z, grad_kl, mu, logb, lam, _lam_value(lam_value), seed, int(num_samples), str(base),
        str(estimator), float(warmup), float(prior_scale), bool(lam_requires_grad))
    return grad_mu, grad_logb, grad_lam

