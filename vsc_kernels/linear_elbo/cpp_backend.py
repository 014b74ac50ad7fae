"""C++/OpenMP CPU backend of ``linear_elbo`` (``csrc/linear_elbo.cpp``).

Implements the forward contract :func:`vsc_kernels.linear_elbo.reference.squared_error`,
a fused forward (the squared errors and the selection over ``J`` in one call, for the
methods the C++ selection knows), and the backward contract
:func:`~vsc_kernels.linear_elbo.reference.linear_elbo_backward` with the same blocks as the
reference but the residuals ``g (x_b - A z_bj)`` from the C++ kernel (which adds only the
rows of ``A^T`` for the codes' non-zeros when they are sparse) and, for sparse codes,
``grad_A`` from the sparse ``z^T @ (g r)`` of ``csrc/sparse_decode.cpp``; ``grad_z`` is one
dense product (the straight-through estimator needs every entry). The dispatcher checks
:func:`vsc_kernels._extension.cpp_available` and falls back to the reference before
calling into this module.
"""

from __future__ import annotations

import torch

from .._extension import require_extension as _extension
from . import reference

FUSED_METHODS = ("max", "avg", "iwae")
SPARSE_DENSITY = 0.25  # grad_A by the sparse product at most at this density of the codes


def squared_error(x, z, A):
    """Contract: ``x (B, D)``, ``z (B, J, d)``, ``A (D, d)`` of one dtype, any strides;
    returns ``E (B, J)`` in the compute dtype."""
    return _extension().linear_elbo_squared_error(x, z, A, reference.CHUNK_ELEMENTS)


def fused_forward(x, z, A, kl, beta, scale, method):
    """``(loss, per_sample, index, weights)`` in the compute dtype (vsc_kernels._elbo's math)."""
    return _extension().linear_elbo_forward(x, z, A, kl, float(beta), float(scale), method,
                                            reference.CHUNK_ELEMENTS)


def _grad_A_block(z_rows, gr, grad_A, nnz):
    """``grad_A += -2 gr^T z_rows`` (``z_rows (n, d)``, ``gr (n, D)``)."""
    n, d = z_rows.shape
    if nnz <= SPARSE_DENSITY * n * d:
        z_w = z_rows if z_rows.dtype == gr.dtype else z_rows.to(gr.dtype)
        grad_A.add_(_extension().sparse_decode_grad_weight_t(z_w, gr).T, alpha=-2.0)
    else:
        grad_A.addmm_(gr.T, z_rows.to(gr.dtype), alpha=-2.0)


def linear_elbo_backward(grad_E, index, x, z, A, need_x, need_z, need_A):
    """The backward contract of :func:`reference.linear_elbo_backward` (same results up to
    rounding), with the residuals and the sparse ``grad_A`` from the C++ kernels."""
    work = grad_E.dtype
    B, J, d = z.shape
    D = x.shape[1]
    ext = _extension()
    dtype = torch.promote_types(torch.promote_types(x.dtype, z.dtype), A.dtype)
    x, z, A = x.to(dtype), z.to(dtype), A.to(dtype)
    A_w = A.to(work)
    grad_x = grad_z = grad_A = None
    if need_A:
        grad_A = torch.zeros((D, d), dtype=work, device=A.device)
    if index is not None:
        # Max ELBO sampling: one residual per row, at the selected sample.
        g = grad_E.gather(1, index[:, None]).squeeze(1)                    # (B,)
        gr, nnz = ext.linear_elbo_residual(x, z, A, g, index, reference.CHUNK_ELEMENTS)
        rows = torch.arange(B, device=z.device)
        if need_x:
            grad_x = 2.0 * gr
        if need_z:
            grad_z = torch.zeros((B, J, d), dtype=work, device=z.device)
            grad_z[rows, index] = -2.0 * (gr @ A_w)
        if need_A:
            _grad_A_block(z[rows, index], gr, grad_A, nnz)
        return grad_x, grad_z, grad_A
    if need_x:
        grad_x = torch.empty((B, D), dtype=work, device=x.device)
    if need_z:
        grad_z = torch.empty((B, J, d), dtype=work, device=z.device)
    # the reference's blocks: whole data rows, or samples of one row when J * D is more
    chunk = reference.CHUNK_ELEMENTS
    if J * D <= chunk:
        step = chunk // max(J * D, 1)
        blocks = [(b0, min(b0 + step, B), 0, J) for b0 in range(0, B, step)]
    else:
        step = max(1, chunk // max(D, 1))
        blocks = [(b, b + 1, j0, min(j0 + step, J)) for b in range(B) for j0 in range(0, J, step)]
    if need_x and len(blocks) > 0 and blocks[0][3] - blocks[0][2] < J:
        grad_x.zero_()
    for b0, b1, j0, j1 in blocks:
        n, m = b1 - b0, j1 - j0
        z_c = z[b0:b1, j0:j1]
        gr, nnz = ext.linear_elbo_residual(x[b0:b1], z_c, A, grad_E[b0:b1, j0:j1], None,
                                           max(chunk, D))
        if need_x:
            part = 2.0 * gr.view(n, m, D).sum(dim=1)
            if m == J:
                grad_x[b0:b1] = part
            else:
                grad_x[b0:b1] += part
        if need_z:
            grad_z[b0:b1, j0:j1] = (-2.0 * (gr @ A_w)).view(n, m, d)
        if need_A:
            _grad_A_block(z_c.reshape(n * m, d), gr, grad_A, nnz)
        del gr
    return grad_x, grad_z, grad_A
