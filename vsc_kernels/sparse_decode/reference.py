"""Plain-PyTorch reference of ``sparse_decode``: the oracle, and the backend contract.

The linear generator of the paper (section 4.1, ``x ~ A z`` with a dictionary
``A (D, d)``; objective (10) and the ELBO's reconstruction term) decodes every
thresholded sample ``z`` (eq. 2, mostly exact zeros) as ``x_hat = A z``, i.e. for
row-stacked codes ``z (..., d)``

    out = z @ A^T                                   (..., D)
    grad_z = grad_out @ A                           dense: the straight-through
                                                    estimator (eq. 4) needs it at
                                                    every entry, zero or not
    grad_A = grad_out^T @ z                         only z's non-zeros contribute

:func:`sparse_decode` is that, computed in the compute dtype (float32, or float64 for
float64 inputs) and returned in the input dtype, differentiable by autograd.

Backend contract (``csr_spmm``), implemented by the Triton and C++ kernels: one
product of a CSR matrix by a dense row-major matrix,

    out[r, :] = sum_{k = crow[r]}^{crow[r+1]-1} val[k] * dense[col[k], :]

with ``crow (R + 1,)`` int64 (``crow[0] = 0``, non-decreasing), ``col (nnz,)`` int64 in
``[0, K)``, ``val (nnz,)`` and ``dense (K, Dn)`` contiguous in one float dtype;
``out (R, Dn)`` in that dtype, accumulated in the compute dtype in the order of ``k``
(no atomics: deterministic). The forward uses it with the CSR of ``z`` and
``dense = A^T`` (each non-zero gathers one contiguous row of ``A^T``); the gradient of
``A`` with the CSR of ``z^T`` (the CSC of ``z``) and ``dense = grad_out``, giving
``grad_A^T``.
"""

from __future__ import annotations

import torch

from .._precision import compute_dtype


def sparse_decode(z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``z @ A^T`` in the compute dtype, returned in ``z``'s dtype (the oracle)."""
    work = compute_dtype(z.dtype)
    return (z.to(work) @ A.to(work).T).to(z.dtype)


def csr_spmm(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
             dense: torch.Tensor) -> torch.Tensor:
    """The backend contract in plain PyTorch (a segment sum of gathered rows)."""
    R = crow.shape[0] - 1
    work = compute_dtype(dense.dtype)
    out = torch.zeros((R, dense.shape[1]), dtype=work, device=dense.device)
    counts = crow[1:] - crow[:-1]
    rows = torch.repeat_interleave(torch.arange(R, device=dense.device), counts)
    out.index_add_(0, rows, val.to(work)[:, None] * dense.to(work)[col])
    return out.to(dense.dtype)
