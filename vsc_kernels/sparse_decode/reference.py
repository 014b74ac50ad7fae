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

Backend contract, implemented by the Triton and C++ kernels (``nnz`` is the number of
non-zeros of ``z``, counted once by the caller; the kernels skip the zeros):

* ``decode(z, At, nnz)``: ``z (N, d) @ At (d, D)`` -> ``(N, D)``;
* ``grad_weight_t(z, grad_out, nnz)``: ``z^T @ grad_out (N, D)`` -> ``(d, D)``, i.e.
  ``grad_A^T``;

inputs of one float dtype (any strides), outputs in that dtype, accumulated in the
compute dtype, every sum in a fixed order (deterministic, no atomics). An exact zero
of ``z`` contributes nothing, even against an inf or NaN (a dense product gives NaN).

The Triton backend builds the CSR of ``z`` (and of ``z^T``, i.e. ``z``'s CSC) with
:func:`compress` and runs one CSR x dense kernel with the contract of :func:`csr_spmm`,

    out[r, :] = sum_{k = crow[r]}^{crow[r+1]-1} val[k] * dense[col[k], :]

for ``crow (R + 1,)`` int64, ``col (nnz,)`` int64, ``val (nnz,)`` and a dense row-major
``dense (K, Dn)``: with ``dense = A^T`` each non-zero gathers one contiguous row of
``A^T``; with the CSR of ``z^T`` and ``dense = grad_out`` it gives ``grad_A^T``. The C++
backend scans ``z`` directly (no compression).
"""

from __future__ import annotations

import torch

from .._precision import compute_dtype


def sparse_decode(z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``z @ A^T`` in the compute dtype, returned in ``z``'s dtype (the oracle)."""
    work = compute_dtype(z.dtype)
    return (z.to(work) @ A.to(work).T).to(z.dtype)


def decode(z: torch.Tensor, At: torch.Tensor, nnz: int) -> torch.Tensor:
    """The contract's ``z @ At`` (dense here: the zeros add nothing)."""
    work = compute_dtype(z.dtype)
    return (z.to(work) @ At.to(work)).to(z.dtype)


def grad_weight_t(z: torch.Tensor, grad_out: torch.Tensor, nnz: int) -> torch.Tensor:
    """The contract's ``z^T @ grad_out`` (``grad_A^T``)."""
    work = compute_dtype(z.dtype)
    return (z.T.to(work) @ grad_out.to(work)).to(z.dtype)


def compress(m: torch.Tensor, nnz: int):
    """CSR ``(crow, col, val)`` of the 2-D ``m`` with ``nnz`` non-zeros, in row-major
    order (deterministic), without a host synchronisation (``nnz`` is given)."""
    mask = m != 0
    crow = torch.zeros((m.shape[0] + 1,), dtype=torch.int64, device=m.device)
    torch.cumsum(torch.count_nonzero(m, dim=1), 0, out=crow[1:])
    try:
        index = torch.nonzero_static(mask, size=nnz)
    except NotImplementedError:   # a device without nonzero_static: one more sync
        index = torch.nonzero(mask)
    rows, col = index[:, 0], index[:, 1].contiguous()
    return crow, col, m[rows, col]


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
