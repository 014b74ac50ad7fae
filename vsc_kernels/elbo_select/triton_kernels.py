"""Triton backend of ``elbo_select`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Implements the backend contract of :mod:`vsc_kernels.elbo_select.reference`
(:func:`squared_error`, :func:`elbo_select_backward`). Both kernels read ``x_hat``
through its strides (no copy), load every input and cast it to the compute dtype at
once (float32; float64 for float64 inputs), and reduce in a fixed order: the results
are deterministic (no atomics).

* ``_squared_error_kernel``: one program per block of ``BLOCK_R`` rows ``r = b J + j``
  of ``x_hat`` viewed as ``(B J, F)``; it loops over ``F`` in blocks of ``BLOCK_F``,
  accumulating ``(x_hat - x)^2`` in a ``[BLOCK_R, BLOCK_F]`` tile (``x`` row
  ``b = r // J``), and sums the tile over its columns at the end.
* ``_backward_kernel``: one program per ``[BLOCK_B, BLOCK_F]`` tile of ``x``; it loads
  the ``x`` tile once and loops over the ``J`` samples, writing
  ``grad_x_hat = 2 g (x_hat - x)`` and, if ``x`` needs a gradient, accumulating
  ``-sum_j`` of it in registers (no atomics, no partial sums in memory). The loads
  of ``x_hat`` are masked by ``g != 0``: under ``method="max"`` only the selected
  sample of each row is read, the others are written as zeros.

``F`` is left to Triton's integer specialization (``F % 16 == 0`` or not, at most three
compiled variants): the column masks ``cols < F`` are uniform over 16 columns only when
the compiler knows that, and without it every load and store is scalar instead of 128
bits wide (checked in the sm_90 PTX). ``B``, ``R`` and ``J`` are not specialized.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .reference import work_dtype


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["R", "J"])
def _squared_error_kernel(
    x_ptr, xh_ptr, e_ptr,
    R, J, F,
    s_xb, s_xf, s_hb, s_hj, s_hf,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < R
    b = rows // J
    j = rows - b * J
    h_row = (b * s_hb + j * s_hj)[:, None]
    x_row = (b * s_xb)[:, None]
    arange_f = tl.arange(0, BLOCK_F).to(tl.int64)
    acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=ACC)
    for f0 in range(0, F, BLOCK_F):
        cols = f0 + arange_f
        mask = row_ok[:, None] & (cols < F)[None, :]
        xh = tl.load(xh_ptr + h_row + cols[None, :] * s_hf, mask=mask, other=0.0).to(ACC)
        xv = tl.load(x_ptr + x_row + cols[None, :] * s_xf, mask=mask, other=0.0).to(ACC)
        diff = xh - xv
        acc += diff * diff
    tl.store(e_ptr + rows, tl.sum(acc, axis=1), mask=row_ok)


@triton.jit(do_not_specialize=["B", "J"])
def _backward_kernel(
    g_ptr, x_ptr, xh_ptr, gxh_ptr, gx_ptr,
    B, J, F,
    s_xb, s_xf, s_hb, s_hj, s_hf,
    NEED_X: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_f = tl.program_id(1).to(tl.int64)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (cols < F)[None, :]
    xv = tl.load(x_ptr + (rows * s_xb)[:, None] + cols[None, :] * s_xf, mask=tile_ok,
                 other=0.0).to(ACC)
    xh_ptrs = xh_ptr + (rows * s_hb)[:, None] + cols[None, :] * s_hf
    out_ptrs = gxh_ptr + (rows * J * F)[:, None] + cols[None, :]
    g_ptrs = g_ptr + rows * J
    acc = tl.zeros([BLOCK_B, BLOCK_F], dtype=ACC)
    for _ in range(0, J):
        g = tl.load(g_ptrs, mask=row_ok, other=0.0).to(ACC)
        live = tile_ok & (g != 0.0)[:, None]
        xh = tl.load(xh_ptrs, mask=live, other=0.0).to(ACC)
        grad = tl.where(live, (2.0 * g)[:, None] * (xh - xv), 0.0)
        tl.store(out_ptrs, grad.to(gxh_ptr.dtype.element_ty), mask=tile_ok)
        if NEED_X:
            acc += grad
        g_ptrs += 1
        xh_ptrs += s_hj
        out_ptrs += F
    if NEED_X:
        tl.store(gx_ptr + (rows * F)[:, None] + cols[None, :],
                 (-acc).to(gx_ptr.dtype.element_ty), mask=tile_ok)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

def _interpreted(device: torch.device) -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or device.type != "cuda"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _num_sms(index)


def _tiles(rows: int, F: int, device: torch.device):
    """Starting ``(BLOCK_ROWS, BLOCK_F)``: GPU tiles of 2048 elements with columns up to
    1024 wide (8 warps: 8 float32 a thread, two 128-bit loads); interpreter (or CPU
    tensors) tiles of up to 2**16 elements, since one program costs far more than its
    elements there."""
    if _interpreted(device):
        tile, max_f = 1 << 16, 8192
    else:
        tile, max_f = 2048, 1024
    block_f = max(16, min(triton.next_power_of_2(max(F, 1)), max_f))
    block_r = max(1, min(tile // block_f, triton.next_power_of_2(max(rows, 1))))
    return block_r, block_f


def _warps(block_r: int, block_f: int) -> int:
    return max(1, min(8, block_r * block_f // 256))


def _forward_config(R: int, F: int, device: torch.device):
    """``(BLOCK_R, BLOCK_F, num_warps)`` (a heuristic; no autotuning): on the GPU, row
    blocks shrink while the grid has fewer than 4 programs per SM."""
    block_r, block_f = _tiles(R, F, device)
    if not _interpreted(device):
        want = 4 * _sm_count(device)
        while block_r > 1 and triton.cdiv(R, block_r) < want:
            block_r //= 2
    return block_r, block_f, _warps(block_r, block_f)


def _backward_config(B: int, F: int, device: torch.device):
    """``(BLOCK_B, BLOCK_F, num_warps)``: on the GPU, the tile shrinks (rows first, then
    columns down to 128) while the grid has fewer than 4 programs per SM."""
    block_b, block_f = _tiles(B, F, device)
    if not _interpreted(device):
        want = 4 * _sm_count(device)
        while block_b > 1 and triton.cdiv(B, block_b) * triton.cdiv(F, block_f) < want:
            block_b //= 2
        while block_f > 128 and triton.cdiv(B, block_b) * triton.cdiv(F, block_f) < want:
            block_f //= 2
    return block_b, block_f, _warps(block_b, block_f)


def _acc_dtype(work: torch.dtype):
    return tl.float64 if work == torch.float64 else tl.float32


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def squared_error(x, x_hat, *, _config=None):
    """Contract of :func:`reference.squared_error`: ``E (B, J)`` in the compute dtype.
    ``_config`` = ``(BLOCK_R, BLOCK_F, num_warps)`` overrides the heuristic (tests)."""
    B, J, F = x_hat.shape
    work = work_dtype(x, x_hat)
    if B == 0 or F == 0:
        return torch.zeros((B, J), dtype=work, device=x_hat.device)
    R = B * J
    sq_err = torch.empty((B, J), dtype=work, device=x_hat.device)
    block_r, block_f, num_warps = _config or _forward_config(R, F, x_hat.device)
    with _device_guard(x_hat.device):
        _squared_error_kernel[(triton.cdiv(R, block_r),)](
            x, x_hat, sq_err, R, J, F,
            x.stride(0), x.stride(1), x_hat.stride(0), x_hat.stride(1), x_hat.stride(2),
            ACC=_acc_dtype(work), BLOCK_R=block_r, BLOCK_F=block_f, num_warps=num_warps,
        )
    return sq_err


def elbo_select_backward(grad_sq_err, x, x_hat, need_x, *, _config=None):
    """Contract of :func:`reference.elbo_select_backward`: ``grad_x_hat (B, J, F)`` in
    ``x_hat.dtype``, ``grad_x (B, F)`` in ``x.dtype`` or None."""
    B, J, F = x_hat.shape
    device = x_hat.device
    work = work_dtype(x, x_hat)
    grad_x_hat = torch.empty((B, J, F), dtype=x_hat.dtype, device=device)
    grad_x = torch.empty((B, F), dtype=x.dtype, device=device) if need_x else None
    if B == 0 or F == 0:
        return grad_x_hat, grad_x
    g = grad_sq_err.to(work).contiguous()
    block_b, block_f, num_warps = _config or _backward_config(B, F, device)
    grid = (triton.cdiv(B, block_b), triton.cdiv(F, block_f))
    with _device_guard(device):
        _backward_kernel[grid](
            g, x, x_hat, grad_x_hat, grad_x if need_x else grad_x_hat,
            B, J, F,
            x.stride(0), x.stride(1), x_hat.stride(0), x_hat.stride(1), x_hat.stride(2),
            NEED_X=bool(need_x), ACC=_acc_dtype(work), BLOCK_B=block_b, BLOCK_F=block_f,
            num_warps=num_warps,
        )
    return grad_x_hat, grad_x
