"""Plain-PyTorch reference of ``elbo_select``: the oracle for every test.

Reads like the paper (Fallah & Rozell, ICML 2022, section 3.3, Algorithm 1): with a
DNN generator ``f_theta`` the decoded samples ``x_hat[b, j] = f_theta(z[b, j])`` are
given; what is left per data row ``b`` and sample ``j`` is

* the reconstruction error of the Gaussian likelihood (eq. 12),
  ``E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2``;
* the per-sample loss ``L[b, j] = c E[b, j] + beta kl[b, j]`` (the negative of eq. 6),
  ``c = 1`` (``recon="sum"``) or ``1 / F`` (``recon="mean"``);
* the selection over ``j``: max ELBO (eq. 9), the average (eq. 7) or importance
  weighting, from :mod:`vsc_kernels._elbo`.

Two entry points:

* :func:`elbo_select` materializes ``x_hat - x`` and differentiates through autograd;
  it is what a user writes by hand, and what the tests compare every backend with.
* :func:`squared_error` / :func:`elbo_select_backward` define the backend contract
  that ``triton_kernels.py`` and ``csrc/elbo_select.cpp`` implement: the forward
  reduction of ``E`` and the backward that writes ``grad x_hat`` (and ``grad x``) from
  ``grad E``, recomputing ``x_hat - x`` from the inputs.
"""

from __future__ import annotations

import math

import torch

from .. import _elbo
from .._elbo import ElboResult
from .._precision import compute_dtype


def result_dtype(x: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor | None) -> torch.dtype:
    """The dtype of the outputs: ``x``, ``x_hat`` and ``kl`` promoted."""
    dtype = torch.promote_types(x.dtype, x_hat.dtype)
    return dtype if kl is None else torch.promote_types(dtype, kl.dtype)


def elbo_select(x: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor | None = None, *,
                beta: float = 1.0, method: str = "max", recon: str = "sum") -> ElboResult:
    """Differentiable reference: ``x (B, ...)``, ``x_hat (B, J, ...)``, ``kl`` None,
    ``(B,)`` or ``(B, J)``. Math in float32 (float64 for float64 inputs); outputs in the
    promoted input dtype; only ``loss`` carries gradients."""
    dtype = result_dtype(x, x_hat, kl)
    work = compute_dtype(dtype)
    B, J = x_hat.shape[:2]
    F = math.prod(x_hat.shape[2:])
    diff = x_hat.to(work) - x.to(work).unsqueeze(1)          # (B, J, ...): materialized
    sq_err = (diff * diff).reshape(B, J, F).sum(-1)            # E[b, j]
    per_sample = _elbo.per_sample_loss(sq_err, None if kl is None else kl.to(work), beta,
                                       _elbo.recon_scale(recon, F))
    row_loss, index, weights = _elbo.select_samples(per_sample, method)
    loss = _elbo.mean_over_rows(row_loss)
    return ElboResult(loss.to(dtype), per_sample.detach().to(dtype), index,
                      weights.detach().to(dtype))


# --------------------------------------------------------------------------------------
# Backend contract (implemented by triton_kernels.py and csrc/elbo_select.cpp)
# --------------------------------------------------------------------------------------

def work_dtype(x: torch.Tensor, x_hat: torch.Tensor) -> torch.dtype:
    """float32 (float64 if ``x`` or ``x_hat`` is float64)."""
    return compute_dtype(torch.promote_types(x.dtype, x_hat.dtype))


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Contract: ``x (B, F)``, ``x_hat (B, J, F)``, any strides, dtypes may differ;
    returns ``E (B, J)`` contiguous in :func:`work_dtype`,
    ``E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2``."""
    work = work_dtype(x, x_hat)
    diff = x_hat.to(work) - x.to(work)[:, None, :]
    return (diff * diff).sum(-1)


def elbo_select_backward(grad_sq_err: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                         need_x: bool):
    """Contract: ``grad_sq_err (B, J)`` (``d loss / d E``, in :func:`work_dtype`), ``x (B, F)``,
    ``x_hat (B, J, F)``; returns ``grad_x_hat (B, J, F)`` contiguous in ``x_hat.dtype`` and,
    if ``need_x``, ``grad_x (B, F)`` contiguous in ``x.dtype`` (else None)::

        grad_x_hat[b, j] = (2 g[b, j]) (x_hat[b, j] - x[b])
        grad_x[b]        = -sum_j grad_x_hat[b, j]      (summed in the compute dtype)

    Kernels write zeros for rows with ``g[b, j] == 0`` without reading ``x_hat`` (all
    samples but the selected one under ``method="max"``).
    """
    work = work_dtype(x, x_hat)
    g = grad_sq_err.to(work)
    diff = x_hat.to(work) - x.to(work)[:, None, :]
    grad = (2.0 * g)[:, :, None] * diff
    grad_x = (-grad.sum(1)).to(x.dtype).contiguous() if need_x else None
    return grad.to(x_hat.dtype).contiguous(), grad_x
