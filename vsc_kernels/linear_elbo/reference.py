"""Plain-PyTorch reference of ``linear_elbo``: the oracle, and the backend contract.

The linear generator of section 4.1: ``x ~ A z`` with the Gaussian likelihood of
eq. (12), ``log p_A(x | z) = -||x - A z||^2``. For ``J`` samples ``z_bj`` of every row
``x_b`` (from :func:`vsc_kernels.threshold_sample`), the per-sample loss is

    L[b, j] = ||x_b - A z_bj||^2 * c + beta * KL[b, (j)]     (the negative of eq. (6))

(``c = 1`` for ``recon="sum"``, ``1/D`` for ``"mean"``), and the rows are reduced by
max ELBO sampling (eq. 9), the average ELBO (eq. 7), the IWAE bound or softmin; see
:mod:`vsc_kernels._elbo`.

Backend contract (what the Triton and C++ backends implement; all of them share the
backward below):

* :func:`squared_error` ``(x (B, D), z (B, J, d), A (D, d)) -> E (B, J)``,
  ``E[b, j] = ||x_b - A z_bj||^2`` in the compute dtype (float32; float64 for float64
  inputs). The inputs share one dtype; any strides. Kernels never build the ``(B, J, D)``
  reconstructions; this reference does (it is the oracle).
* :func:`linear_elbo_backward` ``(grad_E (B, J), index, x, z, A, need_x, need_z, need_A)``
  -> ``(grad_x, grad_z, grad_A)`` in the compute dtype (``None`` where not needed), with
  ``grad_E = dloss/dE``. With ``index`` (method ``"max"``: ``grad_E`` is zero outside
  ``(b, index[b])``) only the selected samples' residuals are recomputed (a ``(B, D)``
  matrix); otherwise the samples are processed in blocks whose residuals hold at most
  ``CHUNK_ELEMENTS`` elements (at least one ``D``-vector), so the backward does not build
  the ``(B, J, D)`` reconstructions either.

:func:`linear_elbo` is the differentiable oracle (plain autograd) used by the
``reference`` backend.
"""

from __future__ import annotations

import torch

from .. import _elbo
from .._precision import compute_dtype

CHUNK_ELEMENTS = 1 << 22  # residual elements per chunk in the backward (16 MiB in float32)


def reconstruction(z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``A z_bj`` for every sample: ``(B, J, D)``."""
    return z @ A.T


def squared_error(x: torch.Tensor, z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The forward contract: ``E[b, j] = ||x_b - A z_bj||^2`` (eq. 12 without the sign)."""
    work = compute_dtype(torch.promote_types(torch.promote_types(x.dtype, z.dtype), A.dtype))
    x, z, A = x.to(work), z.to(work), A.to(work)
    residual = x[:, None, :] - reconstruction(z, A)
    return (residual * residual).sum(dim=-1)


def linear_elbo(x, z, A, kl, beta: float, method: str, recon: str):
    """Differentiable oracle: ``(loss, per_sample, index, weights)`` in the compute dtype;
    only ``loss`` carries a graph."""
    E = squared_error(x, z, A)
    per_sample = _elbo.per_sample_loss(E, kl, beta, _elbo.recon_scale(recon, x.shape[1]))
    row_loss, index, weights = _elbo.select_samples(per_sample, method)
    # An empty batch's loss is 0, still attached to the graph (zero gradients).
    loss = _elbo.mean_over_rows(row_loss) if row_loss.numel() else per_sample.sum()
    return loss, per_sample.detach(), index, weights.detach()


def linear_elbo_backward(grad_E: torch.Tensor, index: torch.Tensor | None, x: torch.Tensor,
                         z: torch.Tensor, A: torch.Tensor, need_x: bool, need_z: bool,
                         need_A: bool):
    """The backward contract (see the module docstring).

    With ``r_bj = x_b - A z_bj`` and ``g = grad_E``:
    ``grad_x_b = 2 sum_j g_bj r_bj``, ``grad_z_bj = -2 g_bj A^T r_bj``,
    ``grad_A = -2 sum_bj g_bj r_bj z_bj^T``.
    """
    work = grad_E.dtype
    B, J, d = z.shape
    D = x.shape[1]
    x_w, A_w = x.to(work), A.to(work)
    grad_x = grad_z = grad_A = None
    if index is not None:
        # Max ELBO sampling: one residual per row, at the selected sample.
        rows = torch.arange(B, device=z.device)
        g = grad_E.gather(1, index[:, None])                           # (B, 1)
        z_sel = z[rows, index].to(work)                                # (B, d)
        gr = g * (x_w - z_sel @ A_w.T)                                 # g_b r_b, (B, D)
        if need_x:
            grad_x = 2.0 * gr
        if need_z:
            grad_z = torch.zeros((B, J, d), dtype=work, device=z.device)
            grad_z[rows, index] = -2.0 * (gr @ A_w)
        if need_A:
            grad_A = -2.0 * (gr.T @ z_sel)
        return grad_x, grad_z, grad_A

    # Every sample carries a weight: blocks of data rows (all J samples of each) whose
    # residuals hold at most CHUNK_ELEMENTS elements, or, when one row's J * D is more,
    # blocks of samples of one row.
    if need_x:
        grad_x = torch.zeros((B, D), dtype=work, device=x.device)
    if need_z:
        grad_z = torch.empty((B, J, d), dtype=work, device=z.device)
    if need_A:
        grad_A = torch.zeros((D, d), dtype=work, device=A.device)
    if J * D <= CHUNK_ELEMENTS:
        step = CHUNK_ELEMENTS // max(J * D, 1)
        blocks = [(b0, min(b0 + step, B), 0, J) for b0 in range(0, B, step)]
    else:
        step = max(1, CHUNK_ELEMENTS // max(D, 1))
        blocks = [(b, b + 1, j0, min(j0 + step, J)) for b in range(B) for j0 in range(0, J, step)]
    for b0, b1, j0, j1 in blocks:
        z_c = z[b0:b1, j0:j1].to(work)                                  # (n, m, d)
        # g r = g (x - A z), in place in the block's one (n, m, D) buffer.
        gr = torch.matmul(z_c, A_w.T).neg_().add_(x_w[b0:b1, None, :])
        gr.mul_(grad_E[b0:b1, j0:j1, None])
        if need_x:
            grad_x[b0:b1] += 2.0 * gr.sum(dim=1)
        if need_z:
            grad_z[b0:b1, j0:j1] = -2.0 * (gr @ A_w)
        if need_A:
            n = (b1 - b0) * (j1 - j0)
            grad_A.addmm_(gr.reshape(n, D).T, z_c.reshape(n, d), alpha=-2.0)
        del gr  # free the block before the next one is allocated
    return grad_x, grad_z, grad_A
