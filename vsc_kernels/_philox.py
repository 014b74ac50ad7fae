"""Counter-based noise shared by every backend, written in plain PyTorch.

This module is the specification of the random numbers drawn by the sampling
ops. The Triton kernels (``vsc_kernels/threshold_sample/triton_kernels.py``)
and the C++ kernels (``csrc/philox.h``) implement exactly the same steps, so
for the same seed and shape every backend draws the same noise (up to the last
bit of the float32 ``log``/``sin``/``cos`` each one uses).

Generator
    Philox4x32-10 (Salmon et al., SC'11; the Random123 constants, the same
    rounds as ``triton.language.randint4x``). Key ``(k0, k1)`` is the 64-bit
    ``seed``; counter ``(c0, c1, c2, c3)`` is ``(q_lo, q_hi, offset_lo,
    offset_hi)`` where ``q`` is the 64-bit index of a group of four outputs and
    ``offset`` a 64-bit stream offset. Both ``seed`` and ``offset`` are drawn
    from torch's generator for every call (see :func:`draw_seed`).

Layout
    The output is viewed as ``rows x d`` (``rows = prod(leading dims) * J``).
    Element ``(r, i)`` takes lane ``i % 4`` of the Philox call with counter
    ``q = r * ceil(d / 4) + i // 4``. Counters are 64-bit, so tensors with more
    than 2**31 elements still get distinct noise.

Uniforms (exact in float32; ``x`` is a 32-bit Philox output)
    ``k = x >> 8`` keeps the top 24 bits.
    Laplace:  ``m = 2k - 2**24 + 1`` (odd, ``|m| < 2**24``), ``u = m / 2**25``
              lies in ``(-1/2, 1/2)`` and never equals 0; ``1 - 2|u| =
              (2**24 - |m|) / 2**24`` is exact.
              ``eps = -sign(u) * log(max(1 - 2|u|, 1e-6))`` (inverse CDF,
              Appendix B, with the paper's clamp).
    Gaussian: Box-Muller on the lane pairs (0, 1) and (2, 3):
              ``u1 = (k_a + 1) / 2**24`` in ``(0, 1]``, ``u2 = k_b / 2**24`` in
              ``[0, 1)``, ``r = sqrt(-2 log u1)``, ``theta = 2 pi u2``;
              the even lane takes ``r cos(theta)``, the odd lane
              ``r sin(theta)``.
"""

from __future__ import annotations

import torch

PHILOX_ROUNDS = 10
PHILOX_M0 = 0xD2511F53  # multiplier applied to c0 (Random123 PHILOX_M4x32_0)
PHILOX_M1 = 0xCD9E8D57  # multiplier applied to c2 (Random123 PHILOX_M4x32_1)
PHILOX_W0 = 0x9E3779B9  # key bump (golden ratio)
PHILOX_W1 = 0xBB67AE85  # key bump (sqrt(3) - 1)
LAPLACE_LOG_CLAMP = 1e-6  # Appendix B: the log's argument is clamped at 1e-6
_MASK32 = 0xFFFFFFFF
_SEED_RANGE = (-(2**63), 2**63 - 1)

LANES = 4


def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``[seed, offset]`` (int64, shape ``(2,)``) from torch's generator.

    With ``generator=None`` the default generator of ``device`` is used, so
    ``torch.manual_seed`` reproduces the draw; on CUDA the tensor stays on the
    device and no host synchronization happens. A user generator is used on its
    own device and the result is moved to ``device``.
    """
    if generator is not None:
        seed = torch.randint(*_SEED_RANGE, (2,), dtype=torch.int64, generator=generator,
                             device=generator.device)
        return seed.to(device)
    return torch.randint(*_SEED_RANGE, (2,), dtype=torch.int64, device=device)


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for unsigned 32-bit values held in int64.

    ``a`` is split into 16-bit halves so that no intermediate exceeds 2**49.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi, p_lo = a_hi * b, a_lo * b
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding unsigned 32-bit values."""
    k0 = k0 & _MASK32
    k1 = k1 & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mul_hi_lo(c0, PHILOX_M0)
        hi1, lo1 = _mul_hi_lo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _split64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 32-bit words of int64 values (two's complement)."""
    return x & _MASK32, (x >> 32) & _MASK32


def philox_lanes(seed: torch.Tensor, rows: int, d: int) -> torch.Tensor:
    """The four raw 32-bit outputs used by a ``rows x d`` tensor.

    Returns int64 of shape ``(rows, d)`` holding, for element ``(r, i)``, lane
    ``i % 4`` of the Philox call at counter ``q = r * ceil(d/4) + i // 4``.
    """
    seed = seed.to(torch.int64)
    device = seed.device
    k0, k1 = _split64(seed[0])
    o0, o1 = _split64(seed[1])
    groups = (d + LANES - 1) // LANES
    q = (torch.arange(rows, dtype=torch.int64, device=device)[:, None] * groups
         + torch.arange(groups, dtype=torch.int64, device=device)[None, :])
    q0, q1 = _split64(q)
    x = philox4x32(q0, q1, o0.expand_as(q0), o1.expand_as(q0), k0, k1)
    return torch.stack(x, dim=-1).reshape(rows, groups * LANES)[:, :d]


def laplace_noise(seed: torch.Tensor, rows: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """Standard Laplace noise by the inverse CDF (Appendix B), shape ``(rows, d)``."""
    k = philox_lanes(seed, rows, d) >> 8
    m = 2 * k - 2**24 + 1  # odd integers in (-2**24, 2**24): u = m / 2**25
    sign_u = torch.sign(m).to(dtype)
    one_minus_2abs_u = (2**24 - m.abs()).to(dtype) * 2.0**-24
    return -sign_u * torch.log(one_minus_2abs_u.clamp(min=LAPLACE_LOG_CLAMP))


def gaussian_noise(seed: torch.Tensor, rows: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise by Box-Muller on lane pairs, shape ``(rows, d)``."""
    groups = (d + LANES - 1) // LANES
    k = (philox_lanes(seed, rows, groups * LANES) >> 8).reshape(rows, groups, 2, 2)
    u1 = (k[..., 0] + 1).to(dtype) * 2.0**-24
    u2 = k[..., 1].to(dtype) * 2.0**-24
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = 2.0 * torch.pi * u2
    pair = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-1)
    return pair.reshape(rows, groups * LANES)[:, :d]


def base_noise(base: str, seed: torch.Tensor, rows: int, d: int, dtype=torch.float32) -> torch.Tensor:
    if base == "laplace":
        return laplace_noise(seed, rows, d, dtype)
    return gaussian_noise(seed, rows, d, dtype)
