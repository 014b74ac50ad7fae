"""Triton backend of ``fista`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Implements the backend contract of :mod:`vsc_kernels.fista.reference`
(:func:`fista_solve`): the same iteration, the same momentum schedule shared by all
rows, the same per-row stopping test and freezing.

One persistent launch runs every iteration: the grid is ``cdiv(B, BLOCK_B)`` programs,
each owning ``BLOCK_B`` rows, and each program loops over ``k = 1 .. max_iter`` on the
device (no host synchronisation). The loop is a ``while`` on a scalar condition, so a
program stops as soon as all of its rows are frozen. The momentum scalars
``t_k`` are computed in-kernel in float64, as the reference does in Python floats, and
rounded to float32 when used, as PyTorch rounds a Python scalar multiplying a float32
tensor. Products ``Y G`` are ``tl.dot`` in IEEE float32 (no TF32).

Two kernels:

* ``_fista_resident_kernel`` (small ``d``: ``next_pow2(d) <= 64`` on the GPU, and the
  interpreter up to 1024): the whole ``[BLOCK_B, D_PAD]`` tiles ``Y``, ``Z_{k-1}``,
  ``c`` and the whole Gram matrix ``G [D_PAD, D_PAD]`` stay in registers for all
  iterations; one ``tl.dot`` per iteration; nothing goes through memory until the end.
* ``_fista_chunked_kernel`` (larger ``d``): ``G`` does not fit on chip, so each
  iteration streams ``[BLOCK_K, BLOCK_N]`` tiles of it (from L2) and produces the
  output in column chunks of ``BLOCK_N``. The program's state lives in global memory,
  rows owned by the program only: ``Z_{k-1}`` in the output ``codes`` itself, ``Y``
  in a double-buffered scratch ``(2, B, d)`` (iteration ``k`` reads buffer
  ``(k - 1) % 2`` in ``BLOCK_K`` column chunks for the products and writes buffer
  ``k % 2``). Row norms for the stopping test are accumulated over the column chunks.
  A ``tl.debug_barrier()`` ends each iteration so that every thread of the program sees
  the ``Y`` written by the others before reading it.

Frozen rows are not written again (``codes`` keeps ``z_k`` of their last iteration) and,
in the chunked kernel, their ``Y`` is not read (masked to zero).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

@triton.jit
def _prox(v, thr, NONNEG: tl.constexpr):
    """Soft-threshold ``sign(v) max(|v| - thr, 0)`` or its non-negative version
    ``max(v - thr, 0)``, written as the reference computes it."""
    if NONNEG:
        out = tl.maximum(v - thr, 0.0)
    else:
        sign = tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0))
        out = sign * tl.maximum(tl.abs(v) - thr, 0.0)
    # tl.maximum may return 0 for a NaN (fmax on the GPU): a NaN stays NaN, as in torch
    return tl.where(v != v, v, out)


@triton.jit
def _stop_test(sq_change, sq_norm, max_change, tol):
    """``||z_k - z_{k-1}|| <= tol ||z_k||`` from the squared row norms. With ``tol == 0``
    the test is exact (the rows stop only when ``z_k == z_{k-1}``), immune to squares
    underflowing; a NaN change never stops a row, nor do codes whose norm is not finite."""
    by_tol = tl.sqrt(sq_change) <= tol * tl.sqrt(sq_norm)
    exact = (sq_change == 0.0) & (max_change == 0.0)
    finite = sq_norm < float("inf")   # False for inf and NaN
    return tl.where(tol > 0.0, by_tol, exact) & finite


@triton.jit
def _momentum(t):
    """``t_{k+1}`` and the float32 momentum ``(t_k - 1) / t_{k+1}`` from float64 ``t_k``."""
    t_next = (1.0 + tl.sqrt(1.0 + 4.0 * t * t)) / 2.0
    mom = ((t - 1.0) / t_next).to(tl.float32)
    return t_next, mom


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["B", "max_iter"])
def _fista_resident_kernel(
    gram_ptr, c_ptr, lam_ptr, z0_ptr, codes_ptr, n_iter_ptr, conv_ptr,
    B, d, max_iter, step, tol,
    NONNEG: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < B
    col_ok = cols < d
    tile_ok = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * d + cols[None, :]

    gram = tl.load(gram_ptr + cols[:, None] * d + cols[None, :],
                   mask=col_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    c = tl.load(c_ptr + offs, mask=tile_ok, other=0.0).to(tl.float32)
    z_prev = tl.load(z0_ptr + offs, mask=tile_ok, other=0.0).to(tl.float32)
    y = z_prev
    lam = tl.load(lam_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    thr = (lam * step)[:, None]

    active = row_ok
    n_iter = tl.zeros([BLOCK_B], dtype=tl.int32)
    conv = row_ok & (rows < 0)            # all False
    n_active = tl.sum(active.to(tl.int32), axis=0)
    t = tl.full([], 1.0, tl.float64)
    k = tl.full([], 1, tl.int32)
    while (k <= max_iter) & (n_active > 0):
        t_next, mom = _momentum(t)
        grad = tl.dot(y, gram, input_precision=DOT_PRECISION) - c
        z = _prox(y - grad * step, thr, NONNEG)
        diff = z - z_prev
        y_next = z + mom * diff
        sq_change = tl.sum(diff * diff, axis=1)
        sq_norm = tl.sum(z * z, axis=1)
        max_change = tl.max(tl.abs(diff), axis=1)
        stop = active & _stop_test(sq_change, sq_norm, max_change, tol)
        keep = active[:, None]
        z_prev = tl.where(keep, z, z_prev)
        y = tl.where(keep, y_next, y)
        n_iter = tl.where(active, k, n_iter)
        conv = conv | stop
        active = active & (stop == 0)
        n_active = tl.sum(active.to(tl.int32), axis=0)
        t = t_next
        k += 1

    tl.store(codes_ptr + offs, z_prev, mask=tile_ok)
    tl.store(n_iter_ptr + rows, n_iter, mask=row_ok)
    tl.store(conv_ptr + rows, conv.to(tl.int8), mask=row_ok)


@triton.jit(do_not_specialize=["B", "max_iter"])
def _fista_chunked_kernel(
    gram_ptr, c_ptr, lam_ptr, codes_ptr, y_ptr, n_iter_ptr, conv_ptr,
    B, d, max_iter, step, tol,
    NONNEG: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``codes`` holds ``z0`` on entry and ``Z_{k-1}`` between iterations; ``y`` is the
    ``(2, B, d)`` scratch with ``y[0] = z0`` on entry."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_offs = rows.to(tl.int64) * d
    arange_n = tl.arange(0, BLOCK_N)
    arange_k = tl.arange(0, BLOCK_K)
    buffer_size = B.to(tl.int64) * d

    lam = tl.load(lam_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    thr = (lam * step)[:, None]

    active = row_ok
    n_iter = tl.zeros([BLOCK_B], dtype=tl.int32)
    conv = row_ok & (rows < 0)            # all False
    n_active = tl.sum(active.to(tl.int32), axis=0)
    t = tl.full([], 1.0, tl.float64)
    k = tl.full([], 1, tl.int32)
    while (k <= max_iter) & (n_active > 0):
        t_next, mom = _momentum(t)
        y_src = y_ptr + ((k - 1) % 2) * buffer_size
        y_dst = y_ptr + (k % 2) * buffer_size
        sq_change = tl.zeros([BLOCK_B], dtype=tl.float32)
        sq_norm = tl.zeros([BLOCK_B], dtype=tl.float32)
        max_change = tl.zeros([BLOCK_B], dtype=tl.float32)
        for n0 in range(0, d, BLOCK_N):
            cols = n0 + arange_n
            col_ok = cols < d
            acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, d, BLOCK_K):
                ks = k0 + arange_k
                k_ok = ks < d
                y_k = tl.load(y_src + row_offs[:, None] + ks[None, :],
                              mask=active[:, None] & k_ok[None, :], other=0.0)
                g_k = tl.load(gram_ptr + ks[:, None] * d + cols[None, :],
                              mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc = tl.dot(y_k, g_k, acc, input_precision=DOT_PRECISION)
            offs = row_offs[:, None] + cols[None, :]
            upd = active[:, None] & col_ok[None, :]
            y = tl.load(y_src + offs, mask=upd, other=0.0)
            z_prev = tl.load(codes_ptr + offs, mask=upd, other=0.0)
            c = tl.load(c_ptr + offs, mask=upd, other=0.0)
            z = _prox(y - (acc - c) * step, thr, NONNEG)
            diff = z - z_prev
            y_next = z + mom * diff
            tl.store(codes_ptr + offs, z, mask=upd)
            tl.store(y_dst + offs, y_next, mask=upd)
            sq_change += tl.sum(diff * diff, axis=1)
            sq_norm += tl.sum(z * z, axis=1)
            max_change = tl.maximum(max_change, tl.max(tl.abs(diff), axis=1))
        stop = active & _stop_test(sq_change, sq_norm, max_change, tol)
        n_iter = tl.where(active, k, n_iter)
        conv = conv | stop
        active = active & (stop == 0)
        n_active = tl.sum(active.to(tl.int32), axis=0)
        t = t_next
        k += 1
        # The next iteration reads, in other threads' layouts, the Y written above.
        tl.debug_barrier()

    tl.store(n_iter_ptr + rows, n_iter, mask=row_ok)
    tl.store(conv_ptr + rows, conv.to(tl.int8), mask=row_ok)


# --------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------

def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _block_rows(B: int, n_sm: int, choices) -> int:
    """The largest row block that still gives every SM a program (else the smallest)."""
    for block_b in choices:
        if triton.cdiv(B, block_b) >= n_sm:
            return block_b
    return choices[-1]


def _launch_config(B: int, d: int, device: torch.device) -> dict:
    """Kernel and block sizes (a heuristic; no autotuning).

    Interpreter (or CPU tensors): one program costs far more than its elements, so one
    program takes up to ``2**20 / next_pow2(d)`` rows (at least 16) and the resident
    kernel runs up to ``d = 1024``.

    GPU: resident kernel for ``next_pow2(d) <= 64`` (``G`` and the tiles in registers;
    ``BLOCK_B`` in 16..64, the largest that still gives every SM a program), the chunked
    kernel above with ``[BLOCK_B in 16..32, 64]`` output tiles and ``BLOCK_K = 32``. The
    float32 ``tl.dot`` runs on FMA units and holds its operands' whole K slice in
    registers, so the tiles are those that compile for sm_90 without spilling
    (176..188 registers a thread at 8 warps).
    """
    d_pad = max(16, triton.next_power_of_2(d))
    if _interpreted() or device.type != "cuda":
        block_b = max(16, min(triton.next_power_of_2(B), (1 << 20) // d_pad))
        if d_pad <= 1024:   # tiles are limited to 2**20 elements
            return dict(kernel="resident", BLOCK_B=block_b, BLOCK_D=d_pad, num_warps=4)
        return dict(kernel="chunked", BLOCK_B=min(block_b, 1024), BLOCK_N=1024, BLOCK_K=1024,
                    num_warps=4, num_stages=1)
    index = device.index if device.index is not None else torch.cuda.current_device()
    n_sm = _num_sms(index)
    if d_pad <= 64:
        block_b = _block_rows(B, n_sm, (64, 32, 16))
        num_warps = 8 if block_b * d_pad >= 2048 else 4
        return dict(kernel="resident", BLOCK_B=block_b, BLOCK_D=d_pad, num_warps=num_warps)
    block_b = _block_rows(B, n_sm, (32, 16))
    return dict(kernel="chunked", BLOCK_B=block_b, BLOCK_N=64, BLOCK_K=32,
                num_warps=8, num_stages=3)


def fista_solve(gram, c, lam, z0, lipschitz: float, max_iter: int, tol: float, nonneg: bool,
                *, _config: dict | None = None):
    """Contract of :func:`reference.fista_solve`: ``codes (B, d)`` in ``c.dtype`` (float64
    problems are solved in float32), ``n_iter (B,)`` int32, ``converged (B,)`` bool.

    ``_config`` overrides the launch configuration (tests, tuning): ``kernel``
    ("resident" or "chunked"), block sizes, ``num_warps``/``num_stages`` and
    ``DOT_PRECISION`` (``"ieee"`` by default; ``"tf32x3"`` runs the products on tensor
    cores at about float32 accuracy)."""
    B, d = c.shape
    out_dtype = c.dtype
    device = c.device
    max_iter = int(max_iter)
    n_iter = torch.zeros((B,), dtype=torch.int32, device=device)
    converged = torch.zeros((B,), dtype=torch.bool, device=device)
    if B == 0:
        return torch.empty((0, d), dtype=out_dtype, device=device), n_iter, converged
    if d == 0:  # every row stops at its first iteration: 0 <= tol * 0
        if max_iter >= 1:
            n_iter.fill_(1)
            converged.fill_(True)
        return torch.empty((B, 0), dtype=out_dtype, device=device), n_iter, converged

    f32 = torch.float32
    gram32 = gram.to(f32).contiguous()
    c32 = c.to(f32).contiguous()
    lam32 = lam.to(f32).expand(B).contiguous()
    z032 = z0.to(f32).contiguous()
    step = 1.0 / float(lipschitz)
    conv8 = torch.zeros((B,), dtype=torch.int8, device=device)

    if _config and "kernel" in _config:   # a whole configuration
        config = dict(_config)
    else:
        config = dict(_launch_config(B, d, device), **(_config or {}))
    kernel = config.pop("kernel")
    block_b = config["BLOCK_B"]
    grid = (triton.cdiv(B, block_b),)
    common = dict(NONNEG=bool(nonneg), DOT_PRECISION=config.pop("DOT_PRECISION", "ieee"))

    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if kernel == "resident":
            codes = torch.empty((B, d), dtype=f32, device=device)
            _fista_resident_kernel[grid](
                gram32, c32, lam32, z032, codes, n_iter, conv8,
                B, d, max_iter, step, float(tol), **common, **config,
            )
        elif kernel == "chunked":
            codes = z032.clone()
            y = torch.empty((2, B, d), dtype=f32, device=device)
            y[0].copy_(z032)
            _fista_chunked_kernel[grid](
                gram32, c32, lam32, codes, y, n_iter, conv8,
                B, d, max_iter, step, float(tol), **common, **config,
            )
        else:
            raise ValueError(f"unknown FISTA kernel {kernel!r}")
    converged = conv8.bool()
    if codes.dtype != out_dtype:
        codes = codes.to(out_dtype)
    return codes, n_iter, converged

