"""Triton backend of ``sparse_decode`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Implements the backend contract of :mod:`vsc_kernels.sparse_decode.reference`
(``decode``, ``grad_weight_t``): ``z``'s CSR (for ``decode``) or CSC (for
``grad_weight_t``) is built with :func:`reference.compress` (torch ops, no host sync:
``nnz`` is given), then one kernel with the contract of :func:`reference.csr_spmm`,
``out[r, :] = sum_k val[k] * dense[col[k], :]``, computes the product: the grid is ``(R, cdiv(Dn, BLOCK_D))``; a program owns one output
row's ``BLOCK_D`` columns, walks the row's non-zeros ``BLOCK_NZ`` at a time (one
``[BLOCK_NZ, BLOCK_D]`` gather of ``dense`` rows, each a contiguous segment, so the loads
vectorize along the columns), and accumulates in float32 (float64 for float64 inputs)
in registers. Each output element is written once by one program: no atomics, and the
sum order is fixed (deterministic). On the GPU the gathered rows (``A^T`` in the
forward, ``grad_out`` in the gradient of ``A``) mostly come from L2.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .reference import compress


@triton.jit(do_not_specialize=["Dn"])
def _csr_spmm_kernel(crow_ptr, col_ptr, val_ptr, dense_ptr, out_ptr, Dn,
                     ACC_DTYPE: tl.constexpr, BLOCK_NZ: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < Dn
    start = tl.load(crow_ptr + row)
    end = tl.load(crow_ptr + row + 1)
    arange_nz = tl.arange(0, BLOCK_NZ).to(tl.int64)
    acc = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    for k0 in range(start, end, BLOCK_NZ):
        ks = k0 + arange_nz
        nz_ok = ks < end
        src = tl.load(col_ptr + ks, mask=nz_ok, other=0)
        val = tl.load(val_ptr + ks, mask=nz_ok, other=0.0).to(ACC_DTYPE)
        tile = tl.load(dense_ptr + src[:, None] * Dn + cols[None, :],
                       mask=nz_ok[:, None] & col_ok[None, :], other=0.0).to(ACC_DTYPE)
        acc += tl.sum(val[:, None] * tile, axis=0)
    tl.store(out_ptr + row * Dn + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _launch_config(R: int, Dn: int, nnz_per_row: float, device: torch.device) -> dict:
    """Block sizes (a heuristic; no autotuning).

    GPU: ``BLOCK_D`` up to 256 columns (1 KB of float32 per gathered row segment,
    128-bit loads with 4 warps = 128 threads x 2 vectors of 4) and ``BLOCK_NZ`` gathered
    rows per step: 16, or 8 when the rows hold few non-zeros (less masked work on the
    last step); ``BLOCK_D`` halves (down to 64) while the grid has fewer than 8
    programs per SM (the gradient of ``A`` has only ``d`` long rows). Interpreter (or CPU tensors): one program costs far more than its
    elements, so whole rows (``BLOCK_D`` up to 4096) and 64 non-zeros a step.
    """
    block_d = triton.next_power_of_2(max(Dn, 1))
    if _interpreted() or device.type != "cuda":
        return dict(BLOCK_D=min(block_d, 4096), BLOCK_NZ=64, num_warps=4)
    block_d = max(32, min(block_d, 256))
    index = device.index if device.index is not None else torch.cuda.current_device()
    n_sm = _num_sms(index)
    while block_d > 64 and R * triton.cdiv(Dn, block_d) < 8 * n_sm:
        block_d //= 2
    block_nz = 16 if nnz_per_row >= 16 else 8
    return dict(BLOCK_D=block_d, BLOCK_NZ=block_nz, num_warps=4)


def csr_spmm(crow, col, val, dense, *, _config: dict | None = None):
    """Contract of :func:`reference.csr_spmm`: ``out (R, Dn)`` in ``dense.dtype``,
    accumulated in float32 (float64 for float64 inputs). ``_config`` overrides the
    launch configuration (tests, tuning): ``BLOCK_D``, ``BLOCK_NZ``, ``num_warps``."""
    R = crow.shape[0] - 1
    K, Dn = dense.shape
    nnz = col.shape[0]
    device = dense.device
    out = torch.empty((R, Dn), dtype=dense.dtype, device=device)
    if R == 0 or Dn == 0:
        return out
    if nnz == 0:
        return out.zero_()
    acc = tl.float64 if dense.dtype == torch.float64 else tl.float32
    config = dict(_launch_config(R, Dn, nnz / R, device), **(_config or {}))
    grid = (R, triton.cdiv(Dn, config["BLOCK_D"]))
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _csr_spmm_kernel[grid](crow.contiguous(), col.contiguous(), val.contiguous(),
                               dense.contiguous(), out, Dn, ACC_DTYPE=acc, **config)
    return out


def decode(z, At, nnz):
    """Contract: ``z (N, d) @ At (d, D)`` -> ``(N, D)`` in z's dtype, over z's CSR."""
    return csr_spmm(*compress(z, int(nnz)), At.contiguous())


def grad_weight_t(z, grad_out, nnz):
    """Contract: ``z^T @ grad_out`` -> ``(d, D)`` in z's dtype, over the CSR of ``z^T``."""
    return csr_spmm(*compress(z.T, int(nnz)), grad_out.contiguous())
