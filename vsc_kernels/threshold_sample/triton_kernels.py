"""Triton backend of ``threshold_sample`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1``).

Implements the backend contract of :mod:`vsc_kernels.threshold_sample.reference`
(:func:`threshold_sample_forward`, :func:`threshold_sample_backward`) with the
noise of :mod:`vsc_kernels._philox`, bit for bit up to the float32 ``log`` /
``sin`` / ``cos`` / ``exp`` of the device.

Layout (as Liger-Kernel's ops): ``@triton.jit`` helpers (Philox, noise), the
forward and backward kernels, and plain-Python launchers.

Both kernels run on a grid of (row blocks of ``M``, column blocks of ``d``,
chunks of the ``J`` samples). A program loads its ``mu``/``logb`` tile once and
loops over its samples ``j``; every element ``(m, j, i)`` regenerates its noise
from the counter ``q = (m J + j) ceil(d/4) + i // 4``, so the backward pass
stores nothing from the forward pass. One Philox call yields the four lanes of
a group of four columns; the lanes are turned into noise separately and put
back in column order with ``tl.interleave``. The ``J`` axis is only split into
chunks when the (row, column) grid is too small to fill the GPU; the backward
pass then reduces the chunks' partial gradients with torch (deterministic, no
atomics), as the forward pass does with the per-column-block KL partial sums.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_BASES = {"laplace": 0, "gaussian": 1}
_ESTIMATORS = {"straight": 0, "subgradient": 1, "straight_shift": 2}


# --------------------------------------------------------------------------------------
# Noise (the specification is vsc_kernels/_philox.py)
# --------------------------------------------------------------------------------------

@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 values (Random123 multipliers and key bumps)."""
    for _ in tl.static_range(10):
        prev0 = c0
        prev2 = c2
        # (hi, lo) of c0 * 0xD2511F53 and of c2 * 0xCD9E8D57
        c0 = tl.umulhi(prev2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(prev0, 0xD2511F53) ^ c3 ^ k1
        c1 = prev2 * 0xCD9E8D57
        c3 = prev0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _laplace_lane(x):
    """Inverse-CDF Laplace noise from one 32-bit Philox output (exact integer uniforms)."""
    k = (x >> 8).to(tl.int32)                     # top 24 bits
    m = 2 * k - 16777215                          # odd, |m| < 2**24: u = m / 2**25
    one_minus_2abs_u = (16777216 - tl.abs(m)).to(tl.float32) * 5.9604644775390625e-08
    log_v = tl.log(tl.maximum(one_minus_2abs_u, 1e-6))
    return tl.where(m > 0, -log_v, log_v)         # -sign(u) * log(...)


@triton.jit
def _box_muller(xa, xb):
    """Box-Muller on one lane pair: (r cos(theta), r sin(theta))."""
    u1 = ((xa >> 8).to(tl.int32) + 1).to(tl.float32) * 5.9604644775390625e-08   # (0, 1]
    u2 = (xb >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08         # [0, 1)
    radius = tl.sqrt(-2.0 * tl.log(u1))
    theta = 6.283185307179586 * u2
    return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def _noise_tile(q, k0, k1, o0, o1, BASE: tl.constexpr):
    """Noise for a [BLOCK_M, 4 * G] tile from the int64 group counters ``q`` [BLOCK_M, G].

    Column ``4 g + l`` of the result is lane ``l`` of the Philox call at ``q[:, g]``.
    """
    c0 = q.to(tl.uint32)                          # low word
    c1 = (q >> 32).to(tl.uint32)                  # high word
    c2 = tl.zeros_like(c0) + o0
    c3 = tl.zeros_like(c0) + o1
    x0, x1, x2, x3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    if BASE == 0:
        e0 = _laplace_lane(x0)
        e1 = _laplace_lane(x1)
        e2 = _laplace_lane(x2)
        e3 = _laplace_lane(x3)
    else:
        e0, e1 = _box_muller(x0, x1)
        e2, e3 = _box_muller(x2, x3)
    # interleave(interleave(e0, e2), interleave(e1, e3)) = e0, e1, e2, e3, e0, e1, ...
    return tl.interleave(tl.interleave(e0, e2), tl.interleave(e1, e3))


@triton.jit
def _seed_words(seed_ptr):
    """Key (k0, k1) and stream offset (o0, o1) as uint32 words of the int64 pair."""
    seed = tl.load(seed_ptr)
    offset = tl.load(seed_ptr + 1)
    return (seed.to(tl.uint32), (seed >> 32).to(tl.uint32),
            offset.to(tl.uint32), (offset >> 32).to(tl.uint32))


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _load_tile(mu_ptr, logb_ptr, M, d, stride_mu_m, stride_mu_d, stride_lb_m, stride_lb_d,
               BASE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows, columns, Philox groups and masks, and its mu/logb tile
    (float32) with the base scale ``exp(logb)`` or ``exp(logb / 2)``."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    groups = pid_d * (BLOCK_D // 4) + tl.arange(0, BLOCK_D // 4).to(tl.int64)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols < d)[None, :]
    mu = tl.load(mu_ptr + rows[:, None] * stride_mu_m + cols[None, :] * stride_mu_d,
                 mask=mask, other=0.0).to(tl.float32)
    logb = tl.load(logb_ptr + rows[:, None] * stride_lb_m + cols[None, :] * stride_lb_d,
                   mask=mask, other=0.0).to(tl.float32)
    if BASE == 0:
        scale = tl.exp(logb)
    else:
        scale = tl.exp(0.5 * logb)
    return rows, cols, groups, row_mask, mask, mu, logb, scale


@triton.jit
def _sample_delta_lam(rows, cols, groups, mask, j, J, d4, wscale, k0, k1, o0, o1, lam_ptr,
                      lam_value, stride_lam_m, stride_lam_j, stride_lam_d,
                      BASE: tl.constexpr, HAS_LAM: tl.constexpr):
    """``delta = s - mu = w * scale * eps`` of sample ``j`` (noise regenerated from its
    counters) and the threshold that applies to it."""
    r = rows * J + j
    eps = _noise_tile(r[:, None] * d4 + groups[None, :], k0, k1, o0, o1, BASE)
    if HAS_LAM:
        lam = tl.load(lam_ptr + rows[:, None] * stride_lam_m + j * stride_lam_j
                      + cols[None, :] * stride_lam_d, mask=mask, other=0.0).to(tl.float32)
    else:
        lam = lam_value
    return wscale * eps, lam


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["M", "J", "j_chunk"])
def _threshold_sample_fwd_kernel(
    mu_ptr, logb_ptr, lam_ptr, seed_ptr, z_ptr, kl_part_ptr,
    M, J, d, d4, j_chunk,
    stride_mu_m, stride_mu_d, stride_lb_m, stride_lb_d,
    stride_lam_m, stride_lam_j, stride_lam_d,
    lam_value, warmup, prior_scale, log_prior_scale,
    BASE: tl.constexpr, HAS_LAM: tl.constexpr, RETURN_KL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(1).to(tl.int64)
    pid_j = tl.program_id(2)
    rows, cols, groups, row_mask, mask, mu, logb, scale = _load_tile(
        mu_ptr, logb_ptr, M, d, stride_mu_m, stride_mu_d, stride_lb_m, stride_lb_d,
        BASE, BLOCK_M, BLOCK_D)
    wscale = warmup * scale
    zero = (mu - mu) + (logb - logb)
    k0, k1, o0, o1 = _seed_words(seed_ptr)

    j_start = pid_j.to(tl.int64) * j_chunk
    j_end = tl.minimum(j_start + j_chunk, J)
    for j in range(j_start, j_end):
        r = rows * J + j                                   # sample row m * J + j
        delta, lam = _sample_delta_lam(
            rows, cols, groups, mask, j, J, d4, wscale, k0, k1, o0, o1, lam_ptr, lam_value,
            stride_lam_m, stride_lam_j, stride_lam_d, BASE, HAS_LAM)
        s = mu + delta
        # zero branch where |delta| <= lam: 0, or NaN where mu or logb is not finite
        z = tl.where(tl.abs(delta) <= lam, zero, s - _sign(delta) * lam)
        if HAS_LAM:
            # a negative, NaN or inf threshold is not checked on the host (no sync): NaN
            z = tl.where((lam >= 0.0) & (lam < float("inf")), z, float("nan"))
        tl.store(z_ptr + r[:, None] * d + cols[None, :], z.to(z_ptr.dtype.element_ty), mask=mask)

    if RETURN_KL:
        if pid_j == 0:
            if BASE == 0:
                abs_mu = tl.abs(mu)
                kl = (abs_mu / prior_scale + scale * tl.exp(-abs_mu / scale) / prior_scale
                      + (log_prior_scale - logb) - 1.0)
            else:
                kl = ((mu * mu + tl.exp(logb)) / (2.0 * prior_scale)
                      + 0.5 * (log_prior_scale - logb) - 0.5)
            kl_row = tl.sum(tl.where(mask, kl, 0.0), axis=1)
            tl.store(kl_part_ptr + rows * tl.num_programs(1) + pid_d, kl_row, mask=row_mask)


@triton.jit(do_not_specialize=["M", "J", "j_chunk"])
def _threshold_sample_bwd_kernel(
    grad_z_ptr, grad_kl_ptr, mu_ptr, logb_ptr, lam_ptr, seed_ptr,
    grad_mu_ptr, grad_logb_ptr, grad_lam_ptr,
    M, J, d, d4, j_chunk,
    stride_gz_m, stride_gz_j, stride_gz_d, stride_gkl,
    stride_mu_m, stride_mu_d, stride_lb_m, stride_lb_d,
    stride_lam_m, stride_lam_j, stride_lam_d,
    lam_value, warmup, prior_scale,
    BASE: tl.constexpr, ESTIMATOR: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr, LAM_GRAD: tl.constexpr, SPLIT_J: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_j = tl.program_id(2)
    rows, cols, groups, row_mask, mask, mu, logb, scale = _load_tile(
        mu_ptr, logb_ptr, M, d, stride_mu_m, stride_mu_d, stride_lb_m, stride_lb_d,
        BASE, BLOCK_M, BLOCK_D)
    wscale = warmup * scale
    k0, k1, o0, o1 = _seed_words(seed_ptr)

    acc_mu = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_logb = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    j_start = pid_j.to(tl.int64) * j_chunk
    j_end = tl.minimum(j_start + j_chunk, J)
    for j in range(j_start, j_end):
        r = rows * J + j
        g = tl.load(grad_z_ptr + rows[:, None] * stride_gz_m + j * stride_gz_j
                    + cols[None, :] * stride_gz_d, mask=mask, other=0.0).to(tl.float32)
        delta, lam = _sample_delta_lam(
            rows, cols, groups, mask, j, J, d4, wscale, k0, k1, o0, o1, lam_ptr, lam_value,
            stride_lam_m, stride_lam_j, stride_lam_d, BASE, HAS_LAM)
        # a = 1 unless |delta| <= lam (a NaN delta is active), applied by multiplication
        # as in the reference (a NaN g stays NaN)
        act = tl.where(tl.abs(delta) <= lam, 0.0, 1.0)
        if BASE == 0:
            ds_dlogb = delta
        else:
            ds_dlogb = 0.5 * delta
        if ESTIMATOR == 0:      # straight: eq. (4)
            acc_mu += g
            acc_logb += g * ds_dlogb
        elif ESTIMATOR == 1:    # subgradient: zero where z is zero
            g_active = g * act
            acc_mu += g_active
            acc_logb += g_active * ds_dlogb
        else:                   # straight_shift: grad_mu = g (1 + a)
            acc_mu += g * (1.0 + act)
            acc_logb += g * ds_dlogb
        if LAM_GRAD:
            sign = tl.where(delta != delta, delta, _sign(delta))   # NaN stays NaN
            grad_lam = -g * sign * act
            tl.store(grad_lam_ptr + r[:, None] * d + cols[None, :],
                     grad_lam.to(grad_lam_ptr.dtype.element_ty), mask=mask)

    if HAS_GRAD_KL:
        if pid_j == 0:
            gkl = tl.load(grad_kl_ptr + rows * stride_gkl, mask=row_mask,
                          other=0.0).to(tl.float32)[:, None]
            if BASE == 0:
                abs_mu = tl.abs(mu)
                decay = tl.exp(-abs_mu / scale)
                dkl_mu = _sign(mu) * (1.0 - decay) / prior_scale
                dkl_logb = decay * (scale + abs_mu) / prior_scale - 1.0
            else:
                dkl_mu = mu / prior_scale
                dkl_logb = tl.exp(logb) / (2.0 * prior_scale) - 0.5
            acc_mu += gkl * dkl_mu
            acc_logb += gkl * dkl_logb

    out = rows[:, None] * d + cols[None, :]
    if SPLIT_J:   # float32 partial sums, one (M, d) slab per chunk of J
        out += pid_j.to(tl.int64) * M * d
    tl.store(grad_mu_ptr + out, acc_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_logb_ptr + out, acc_logb.to(grad_logb_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _warps_for(tile: int) -> int:
    # One warp per 128 elements: each thread runs one Philox call (4 columns). With
    # more elements per thread the kernels need 128-240 registers (sm_90 ptxas) and
    # occupancy drops; with fewer, threads would only replicate the Philox work.
    return max(1, min(8, tile // 128))


def _launch_config(M: int, J: int, d: int, device: torch.device, j_split: int | None = None,
                   min_chunk: int = 1):
    """The launch configuration of :func:`_compute_launch_config`, cached per shape (a
    per-call cost on the paper's small shapes)."""
    interpreted = _interpreted() or device.type != "cuda"
    index = None
    if not interpreted:
        index = device.index if device.index is not None else torch.cuda.current_device()
    return _cached_launch_config(M, J, d, interpreted, index, j_split, min_chunk)


@functools.lru_cache(maxsize=1024)
def _cached_launch_config(M, J, d, interpreted, index, j_split, min_chunk):
    return _compute_launch_config(M, J, d, interpreted, index, j_split, min_chunk)


def _compute_launch_config(M: int, J: int, d: int, interpreted: bool, index: int | None,
                           j_split: int | None, min_chunk: int):
    """Block sizes, warps and the J chunking (a heuristic; no autotuning).

    GPU: a [BLOCK_M, BLOCK_D] tile of about 1024 elements (BLOCK_D = next power of 2 of
    d, at least 4 (one Philox group), at most 256) with one warp per 128 elements
    (8 warps for a full tile; at most 64 registers per thread on sm_90).
    BLOCK_M halves while the grid has fewer than 2 programs per SM; then, if the grid
    holds fewer than 32 warps per SM, J is split into chunks of at least ``min_chunk``
    samples (a third grid axis) to make up the difference. Interpreter (or CPU tensors): one
    program costs far more than its elements, so tiles of up to 32768 elements and no
    splitting. ``j_split`` forces the number of J chunks (tests).
    """
    block_d = max(4, triton.next_power_of_2(d))
    if interpreted:
        block_d = min(block_d, 4096)
        tile = 32768
    else:
        block_d = min(block_d, 256)
        tile = 1024
    block_m = max(1, min(tile // block_d, triton.next_power_of_2(M)))
    n_col = triton.cdiv(d, block_d)
    if interpreted:
        want_warps = 0
    else:
        n_sm = _num_sms(index)
        want_warps = 32 * n_sm
        # smaller tiles only to spread a small grid over the SMs (the warp count of the
        # grid does not depend on BLOCK_M: one warp per 128 elements)
        while block_m > 1 and triton.cdiv(M, block_m) * n_col < 2 * n_sm:
            block_m //= 2
    num_warps = _warps_for(block_m * block_d)
    n_prog = triton.cdiv(M, block_m) * n_col
    J1 = max(J, 1)
    if j_split is None:
        j_split = 1
        if n_prog * num_warps < want_warps:
            j_split = min(triton.cdiv(J1, min_chunk),
                          triton.cdiv(want_warps, n_prog * num_warps))
    j_split = max(1, min(int(j_split), J1))
    j_chunk = triton.cdiv(J1, j_split)
    j_split = triton.cdiv(J1, j_chunk)
    return block_m, block_d, j_chunk, j_split, num_warps


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lam_args(lam: torch.Tensor | None, mu: torch.Tensor):
    if lam is None:
        return mu, 0, 0, 0, False
    return lam, lam.stride(0), lam.stride(1), lam.stride(2), True


@functools.lru_cache(maxsize=64)
def _log_prior_scale(prior_scale: float) -> float:
    # the reference computes log(prior_scale) in float32 (float64 values round to it)
    return float(torch.log(torch.tensor(float(prior_scale), dtype=torch.float32)))


def threshold_sample_forward(mu, logb, lam, lam_value, seed, num_samples, base, warmup,
                             return_kl, prior_scale, *, _j_split=None):
    """Contract of :func:`reference.threshold_sample_forward`: ``z (M, J, d)`` contiguous in
    ``mu.dtype`` and ``kl (M,)`` in the compute dtype (float32; float64 for float64
    inputs, computed in float32) or None."""
    M, d = mu.shape
    J = int(num_samples)
    work = _work_dtype(mu.dtype)
    z = torch.empty((M, J, d), dtype=mu.dtype, device=mu.device)
    if M == 0 or d == 0:
        kl = torch.zeros((M,), dtype=work, device=mu.device) if return_kl else None
        return z, kl
    block_m, block_d, j_chunk, j_split, num_warps = _launch_config(M, J, d, mu.device, _j_split)
    n_col = triton.cdiv(d, block_d)
    kl_part = (torch.empty((M, n_col), dtype=torch.float32, device=mu.device)
               if return_kl else z)
    lam_t, s_lm, s_lj, s_ld, has_lam = _lam_args(lam, mu)
    grid = (triton.cdiv(M, block_m), n_col, j_split)
    _threshold_sample_fwd_kernel[grid](
        mu, logb, lam_t, seed, z, kl_part,
        M, J, d, triton.cdiv(d, 4), j_chunk,
        mu.stride(0), mu.stride(1), logb.stride(0), logb.stride(1),
        s_lm, s_lj, s_ld,
        float(lam_value), float(warmup), float(prior_scale), _log_prior_scale(prior_scale),
        BASE=_BASES[base], HAS_LAM=has_lam, RETURN_KL=bool(return_kl),
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    kl = None
    if return_kl:
        kl = (kl_part[:, 0] if n_col == 1 else kl_part.sum(1)).to(work)
    return z, kl


def threshold_sample_backward(grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples,
                              base, estimator, warmup, prior_scale, lam_requires_grad, *,
                              _j_split=None):
    """Contract of :func:`reference.threshold_sample_backward`: ``grad_mu, grad_logb (M, d)``
    in ``mu.dtype`` (reduced over J in float32) and ``grad_lam (M, J, d)`` in the compute
    dtype, or None."""
    M, d = mu.shape
    J = int(num_samples)
    work = _work_dtype(mu.dtype)
    lam_grad = bool(lam_requires_grad)
    grad_lam = (torch.empty((M, J, d), dtype=work, device=mu.device) if lam_grad else None)
    if M == 0 or d == 0:
        return (torch.zeros((M, d), dtype=mu.dtype, device=mu.device),
                torch.zeros((M, d), dtype=mu.dtype, device=mu.device), grad_lam)
    block_m, block_d, j_chunk, j_split, num_warps = _launch_config(M, J, d, mu.device, _j_split,
                                                                   min_chunk=4)
    split = j_split > 1
    if split:
        grad_mu = torch.empty((j_split, M, d), dtype=torch.float32, device=mu.device)
        grad_logb = torch.empty((j_split, M, d), dtype=torch.float32, device=mu.device)
    else:
        grad_mu = torch.empty((M, d), dtype=mu.dtype, device=mu.device)
        grad_logb = torch.empty((M, d), dtype=mu.dtype, device=mu.device)
    lam_t, s_lm, s_lj, s_ld, has_lam = _lam_args(lam, mu)
    has_gkl = grad_kl is not None
    gkl_t, s_gkl = (grad_kl, grad_kl.stride(0)) if has_gkl else (mu, 0)
    grid = (triton.cdiv(M, block_m), triton.cdiv(d, block_d), j_split)
    _threshold_sample_bwd_kernel[grid](
        grad_z, gkl_t, mu, logb, lam_t, seed,
        grad_mu, grad_logb, grad_lam if lam_grad else mu,
        M, J, d, triton.cdiv(d, 4), j_chunk,
        grad_z.stride(0), grad_z.stride(1), grad_z.stride(2), s_gkl,
        mu.stride(0), mu.stride(1), logb.stride(0), logb.stride(1),
        s_lm, s_lj, s_ld,
        float(lam_value), float(warmup), float(prior_scale),
        BASE=_BASES[base], ESTIMATOR=_ESTIMATORS[estimator], HAS_LAM=has_lam,
        HAS_GRAD_KL=has_gkl, LAM_GRAD=lam_grad, SPLIT_J=split,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    if split:
        grad_mu = grad_mu.sum(0).to(mu.dtype)
        grad_logb = grad_logb.sum(0).to(mu.dtype)
    return grad_mu, grad_logb, grad_lam
