"""Triton backend of ``linear_elbo`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Implements the forward contract :func:`vsc_kernels.linear_elbo.reference.squared_error`,
``E[b, j] = ||x_b - A z_bj||^2``, as a GEMM with a reducing epilogue: the ``M = B * J``
rows of ``z`` (any strides; row ``m`` is sample ``j = m % J`` of data row ``b = m // J``)
times ``A^T``. A program owns ``BLOCK_M`` rows and a set of ``BLOCK_N``-column tiles of
the ``D`` features (tiles ``pid_n, pid_n + n_split, ...``); for each tile it accumulates
``z A^T`` over ``d`` in ``BLOCK_K`` slices with ``tl.dot`` (float32 accumulator), loads the
matching tile of ``x`` (rows ``b``, shared by the ``J`` samples of a row and read from
cache after the first), subtracts, squares and adds the row sums to a running
``BLOCK_M`` vector. Nothing of size ``(B, J, D)`` exists: the output is ``n_split``
partial sums per row, added up on the host side (``n_split`` is 1 to 8).

Precision: float16/bfloat16 tiles go to ``tl.dot`` as they are (their products are exact
in float32, accumulation is float32); float32 tiles use ``input_precision="ieee"`` by
default (full float32 products; ``_config={"DOT_PRECISION": "tf32x3"}`` tries the tensor
cores at about float32 accuracy); float64 inputs (gradient checks) are reduced in
float64 with a broadcast multiply-and-sum instead of ``tl.dot`` on the GPU (``tl.dot``,
i.e. NumPy's float64 product, in the interpreter). Under the interpreter
low-precision tiles are cast to float32 before the product (the interpreter's bf16/fp16
arithmetic is not the GPU's), which gives the same exact products.

The backward is the shared :func:`~vsc_kernels.linear_elbo.reference.linear_elbo_backward`
(residuals recomputed by cuBLAS products, only the selected ones for ``method="max"``).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["M", "J", "D", "d", "n_split"])
def _squared_error_kernel(
    x_ptr, z_ptr, a_ptr, part_ptr,
    M, J, D, d, n_split,
    stride_xb, stride_xf, stride_zb, stride_zj, stride_zk, stride_af, stride_ak,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, IS_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    b = rows // J
    j = rows - b * J
    z_rows = z_ptr + b * stride_zb + j * stride_zj          # [BLOCK_M] pointers
    x_rows = x_ptr + b * stride_xb
    arange_n = tl.arange(0, BLOCK_N)
    arange_k = tl.arange(0, BLOCK_K)

    sq = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    for n0 in range(pid_n * BLOCK_N, D, n_split * BLOCK_N):
        cols = n0 + arange_n
        col_ok = cols < D
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + arange_k
            k_ok = ks < d
            z_tile = tl.load(z_rows[:, None] + ks[None, :] * stride_zk,
                             mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            # The (BLOCK_K, BLOCK_N) tile of A^T: a_t[k, n] = A[n, k].
            a_tile = tl.load(a_ptr + cols[None, :].to(tl.int64) * stride_af + ks[:, None] * stride_ak,
                             mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                z_tile = z_tile.to(ACC_DTYPE)
                a_tile = a_tile.to(ACC_DTYPE)
            if USE_DOT:
                if IS_FP32:
                    acc = tl.dot(z_tile, a_tile, acc, input_precision=DOT_PRECISION)
                else:
                    acc = tl.dot(z_tile, a_tile, acc)
            else:
                acc += tl.sum(z_tile[:, :, None] * a_tile[None, :, :], axis=1)
        x_tile = tl.load(x_rows[:, None] + cols[None, :] * stride_xf,
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(ACC_DTYPE)
        # masked lanes are zero, also where an inf code met A's zero padding (inf * 0)
        r = tl.where(col_ok[None, :], x_tile - acc, 0.0)
        sq += tl.sum(r * r, axis=1)
    tl.store(part_ptr + pid_n * M + rows, sq, mask=row_ok)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _launch_config(M: int, D: int, d: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Block sizes and the column split (a heuristic; no autotuning).

    Interpreter: a program (and a loop iteration) costs far more than its elements, so
    tiles are as large as the problem allows (up to 2048 columns, 256-wide ``d`` slices,
    ``2**20``-element output tiles) and there is no column split.

    GPU: float16/bfloat16 ``[128 (or 64), 128] x 64`` tiles on the tensor cores, 8 warps,
    3 stages; float32 (IEEE, FMA units) ``[64, 64] x 32`` with 4 warps; float64
    ``[16, 16] x 16``. The column tiles are split over up to 8 programs per row block so
    that the grid covers about two programs per SM.
    """
    n_pad = max(16, triton.next_power_of_2(D))
    k_pad = max(16, triton.next_power_of_2(d))
    if _interpreted() or device.type != "cuda":
        block_n = min(n_pad, 2048)
        block_k = min(k_pad, 256)
        block_m = max(16, min(triton.next_power_of_2(M), (1 << 20) // block_n))
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, n_split=1,
                    num_warps=4, num_stages=1)
    if dtype == torch.float64:
        config = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    elif dtype == torch.float32:
        config = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    else:
        config = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    index = device.index if device.index is not None else torch.cuda.current_device()
    n_sm = _num_sms(index)
    if config["BLOCK_M"] == 128 and triton.cdiv(M, 128) * triton.cdiv(D, 128) < n_sm:
        config["BLOCK_M"] = 64
    config["n_split"] = _column_split(triton.cdiv(M, config["BLOCK_M"]),
                                      triton.cdiv(D, config["BLOCK_N"]), 2 * n_sm)
    return config


def _column_split(m_blocks: int, n_tiles: int, target_programs: int) -> int:
    """Programs per row block: enough for ``target_programs`` in all, at most 8, and an
    equal number of column tiles for each."""
    wanted = min(8, n_tiles, max(1, triton.cdiv(target_programs, m_blocks)))
    per_program = triton.cdiv(n_tiles, wanted)
    return triton.cdiv(n_tiles, per_program)


def squared_error(x: torch.Tensor, z: torch.Tensor, A: torch.Tensor, *,
                  _config: dict | None = None) -> torch.Tensor:
    """Contract of :func:`reference.squared_error`: ``E (B, J)`` in the compute dtype.

    ``_config`` overrides the launch configuration (tests, tuning): ``BLOCK_M``,
    ``BLOCK_N``, ``BLOCK_K``, ``n_split``, ``num_warps``, ``num_stages`` and
    ``DOT_PRECISION`` (``"ieee"`` by default for float32 inputs; ``"tf32x3"``)."""
    B, J, d = z.shape
    D = x.shape[1]
    M = B * J
    work = torch.float64 if z.dtype == torch.float64 else torch.float32
    device = z.device
    if M == 0:
        return torch.empty((B, J), dtype=work, device=device)
    if D == 0:
        return torch.zeros((B, J), dtype=work, device=device)
    if d == 0:  # A z = 0: the squared norm of x, repeated over the samples
        xw = x.to(work)
        return (xw * xw).sum(dim=1, keepdim=True).expand(B, J).contiguous()

    config = dict(_launch_config(M, D, d, z.dtype, device), **(_config or {}))
    precision = config.pop("DOT_PRECISION", "ieee")
    n_split = config.pop("n_split")
    part = torch.empty((n_split, M), dtype=work, device=device)
    grid = (triton.cdiv(M, config["BLOCK_M"]), n_split)
    acc_dtype = tl.float64 if work == torch.float64 else tl.float32
    low_precision = z.dtype in (torch.float16, torch.bfloat16)
    upcast = work == torch.float64 or (low_precision and _interpreted())
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _squared_error_kernel[grid](
            x, z, A, part, M, J, D, d, n_split,
            x.stride(0), x.stride(1), z.stride(0), z.stride(1), z.stride(2),
            A.stride(0), A.stride(1),
            USE_DOT=work == torch.float32 or _interpreted(),
            UPCAST=upcast, IS_FP32=work == torch.float32 and (upcast or not low_precision),
            DOT_PRECISION=precision, ACC_DTYPE=acc_dtype,
            **config,
        )
    E = part[0] if n_split == 1 else part.sum(dim=0)
    return E.view(B, J)
