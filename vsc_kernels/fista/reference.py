"""Plain-PyTorch reference of batched FISTA (Beck & Teboulle, 2009): the oracle.

For every row ``x_b`` of ``x (B, D)`` independently, FISTA solves

    min_z  F(z) = 0.5 ||x_b - A z||^2 + lam_b ||z||_1          (the paper's objective (10)
                                                                 up to the factor 1/2)

with ``A (D, d)``. Working from the Gram matrix ``G = A^T A`` and ``c_b = A^T x_b``
(computed once), the gradient of the smooth part is ``G y - c_b`` and each iteration is

    z_k     = prox_{lam/L}(y_k - (G y_k - c) / L)                 soft-threshold (or its
                                                                 non-negative version)
    t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2
    y_{k+1} = z_k + ((t_k - 1) / t_{k+1}) (z_k - z_{k-1})

from ``z_0 = init`` (or 0), ``y_1 = z_0``, ``t_1 = 1``, with step ``1/L``,
``L = ||A||_2^2`` (power iteration on ``G``). A row stops after iteration ``k`` when
``||z_k - z_{k-1}|| <= tol * ||z_k||`` (and ``||z_k||`` is finite: NaN or inf codes never
count as converged); stopped rows are frozen, ``max_iter`` caps the rest. The momentum schedule ``t_k`` is the same for every row.

Backend contract (``fista_solve``), implemented identically by the Triton and C++
kernels: inputs ``gram (d, d)``, ``c (B, d)``, ``lam (B,)``, ``z0 (B, d)`` in the
compute dtype (float32, or float64 for float64 problems), float ``lipschitz``, ints
``max_iter``, bool ``nonneg``, float ``tol``; returns ``codes (B, d)`` in the compute
dtype, ``n_iter (B,)`` int32 and ``converged (B,)`` bool.
"""

from __future__ import annotations

import torch

CHECK_EVERY = 16  # iterations between host checks of "all rows stopped"


def power_iteration(gram: torch.Tensor, iterations: int = 100,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Largest eigenvalue of the symmetric PSD ``gram`` (``= ||A||_2^2``), slightly
    over-estimated (by 1e-6 relative) so that ``1/L`` is a safe step."""
    d = gram.shape[0]
    if generator is None:
        generator = torch.Generator(device=gram.device).manual_seed(0)
    v = torch.randn(d, generator=generator, device=gram.device, dtype=gram.dtype)
    v = v / v.norm().clamp_min(torch.finfo(gram.dtype).tiny)
    for _ in range(iterations):
        w = gram @ v
        v = w / w.norm().clamp_min(torch.finfo(gram.dtype).tiny)
    return (v @ (gram @ v)) * (1 + 1e-6)


def soft_threshold(v: torch.Tensor, threshold: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """The proximal operator of ``threshold * ||.||_1`` (plus the indicator of z >= 0)."""
    if nonneg:
        return torch.clamp(v - threshold, min=0)
    return torch.sign(v) * torch.clamp(v.abs() - threshold, min=0)


def fista_solve(gram, c, lam, z0, lipschitz: float, max_iter: int, tol: float, nonneg: bool):
    """The backend contract; see the module docstring."""
    B, d = c.shape
    step = 1.0 / lipschitz
    threshold = (lam * step)[:, None]
    z_prev = z0.clone()
    y = z0.clone()
    t = 1.0
    n_iter = torch.zeros(B, dtype=torch.int32, device=c.device)
    converged = torch.zeros(B, dtype=torch.bool, device=c.device)
    active = torch.ones(B, dtype=torch.bool, device=c.device)
    for k in range(1, max_iter + 1):
        z = soft_threshold(y - (y @ gram - c) * step, threshold, nonneg)  # gram is symmetric
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        y_next = z + ((t - 1.0) / t_next) * (z - z_prev)
        change = (z - z_prev).norm(dim=1)
        z_norm = z.norm(dim=1)
        # a NaN change never stops a row, nor do codes whose norm is not finite
        stop_now = active & (change <= tol * z_norm) & torch.isfinite(z_norm)
        # Frozen rows keep their codes; the others move on.
        keep = active[:, None]
        z_prev = torch.where(keep, z, z_prev)
        y = torch.where(keep, y_next, y)
        n_iter = torch.where(active, torch.full_like(n_iter, k), n_iter)
        converged = converged | stop_now
        active = active & ~stop_now
        t = t_next
        if k % CHECK_EVERY == 0 and not bool(active.any()):
            break
    return z_prev, n_iter, converged


def objective(x: torch.Tensor, A: torch.Tensor, codes: torch.Tensor, lam) -> torch.Tensor:
    """Per-row ``0.5 ||x - A z||^2 + lam ||z||_1``."""
    residual = x - codes @ A.T
    lam = torch.as_tensor(lam, dtype=codes.dtype, device=codes.device)
    return 0.5 * (residual * residual).sum(-1) + lam * codes.abs().sum(-1)
