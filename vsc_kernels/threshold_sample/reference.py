"""Plain-PyTorch reference of ``threshold_sample``: the oracle for every test.

Reads like the paper (Fallah & Rozell, ICML 2022):

* base sample, Appendix B: ``s = mu + w * b * eps`` with ``b = exp(logb)`` and
  Laplace ``eps`` (inverse CDF), or ``b = exp(logb / 2)`` (``logb`` is the
  log-variance ``2 log sigma``) and Gaussian ``eps``; ``w`` is the warm-up.
* shifted soft-threshold, eq. (2):
  ``T(s; lam, mu) = sign(s - mu) max(|s - mu| - lam, 0) + 1[|s - mu| > lam] mu``.
* straight-through estimator, eq. (4): ``z~ = s + T(sg[s]) - sg[s]``.
* KL of the base distribution against its prior, Appendix B.

Two entry points share these formulas:

* :func:`threshold_sample` is differentiable through autograd (the estimators
  are written with ``detach``, literally as in eq. (4)); tests compare the
  kernels' hand-written backward against it.
* :func:`threshold_sample_forward` / :func:`threshold_sample_backward` follow
  the backend contract that the Triton and C++ kernels implement (2-D views,
  float32 math, gradients reduced over the J samples).
"""

from __future__ import annotations

import torch

from .._philox import base_noise
from .._precision import compute_dtype

BASES = ("laplace", "gaussian")
ESTIMATORS = ("straight", "subgradient", "straight_shift")


def base_scale(logb: torch.Tensor, base: str) -> torch.Tensor:
    """Scale of the base distribution: ``b = exp(logb)`` (Laplace) or ``sigma = exp(logb / 2)``."""
    return torch.exp(logb) if base == "laplace" else torch.exp(0.5 * logb)


def zero_branch(mu: torch.Tensor, logb: torch.Tensor) -> torch.Tensor:
    """The value of the threshold's zero branch: ``(mu - mu) + (logb - logb)``, which is
    ``+0.0`` for finite inputs and NaN where ``mu`` or ``logb`` is NaN or infinite (the
    non-finite policy: such an input never becomes a zero of ``z``)."""
    return (mu - mu) + (logb - logb)


def sign_keeping_nan(x: torch.Tensor) -> torch.Tensor:
    """``torch.sign``, except that a NaN stays NaN (``torch.sign(nan)`` is 0)."""
    return torch.where(torch.isnan(x), x, torch.sign(x))


def shifted_soft_threshold(s: torch.Tensor, lam, mu: torch.Tensor) -> torch.Tensor:
    """Eq. (2): exactly zero where ``|s - mu| <= lam``, else ``s - sign(s - mu) lam``."""
    delta = s - mu
    return torch.sign(delta) * torch.clamp(delta.abs() - lam, min=0) + (delta.abs() > lam) * mu


def kl_divergence(mu: torch.Tensor, logb: torch.Tensor, base: str = "laplace",
                  prior_scale: float = 1.0) -> torch.Tensor:
    """Per-element KL of ``q(s | x)`` against the prior (Appendix B).

    Laplace (Meyer, 2021), prior ``Laplace(0, b0)`` with ``b0 = prior_scale``:
    ``|mu|/b0 + b exp(-|mu|/b)/b0 + log(b0/b) - 1``.
    Gaussian, prior ``N(0, sigma0^2)`` with ``sigma0^2 = prior_scale`` (the prior
    *variance*, matching ``logb`` = log-variance and the paper's public code):
    ``(mu^2 + sigma^2) / (2 sigma0^2) + log(sigma0 / sigma) - 1/2``.
    """
    if base == "laplace":
        b = torch.exp(logb)
        return (mu.abs() / prior_scale + b * torch.exp(-mu.abs() / b) / prior_scale
                + (torch.log(torch.as_tensor(prior_scale, dtype=logb.dtype)) - logb) - 1.0)
    variance = torch.exp(logb)
    return ((mu * mu + variance) / (2.0 * prior_scale)
            + 0.5 * (torch.log(torch.as_tensor(prior_scale, dtype=logb.dtype)) - logb) - 0.5)


def _sample_shape(mu: torch.Tensor, num_samples: int | None) -> tuple[tuple[int, ...], int]:
    if num_samples is None:
        return tuple(mu.shape), 1
    return tuple(mu.shape[:-1]) + (num_samples, mu.shape[-1]), num_samples


def torch_rng_noise(base: str, shape, device, dtype) -> torch.Tensor:
    """The same base noise drawn with torch's own RNG, as hand-written PyTorch does it
    (``u ~ U(-1/2, 1/2)`` through the inverse CDF, or ``randn``). Not bit-compatible
    with the kernels; the benchmarks' baseline."""
    if base == "laplace":
        u = torch.rand(shape, device=device, dtype=dtype) - 0.5
        return -torch.sign(u) * torch.log((1.0 - 2.0 * u.abs()).clamp(min=1e-6))
    return torch.randn(shape, device=device, dtype=dtype)


def threshold_sample(mu, logb, lam, *, seed: torch.Tensor | None = None,
                     num_samples: int | None = None, base: str = "laplace",
                     estimator: str = "straight", warmup: float = 1.0, return_kl: bool = False,
                     prior_scale: float = 1.0, noise: str = "philox"):
    """Differentiable reference (autograd through eq. (4)).

    ``noise="philox"`` draws the kernels' noise from ``seed``, the int64 ``[seed,
    offset]`` pair of :func:`vsc_kernels._philox.draw_seed`, so results match every
    backend; ``noise="torch"`` uses torch's RNG (:func:`torch_rng_noise`).
    """
    out_dtype = mu.dtype
    work = compute_dtype(out_dtype)
    mu_w, logb_w = mu.to(work), logb.to(work)
    shape, J = _sample_shape(mu, num_samples)
    d = mu.shape[-1]
    rows = mu.numel() // d * J if d else 0

    if noise == "philox":
        eps = base_noise(base, seed, rows, d, work).reshape(shape)
    else:
        eps = torch_rng_noise(base, shape, mu.device, work)
    if num_samples is not None:  # the sample axis is second to last
        mu_w, logb_w = mu_w.unsqueeze(-2), logb_w.unsqueeze(-2)
    lam_w = lam.to(work) if isinstance(lam, torch.Tensor) else lam

    # Appendix B: s = mu + w * b * eps, written as s - mu = delta to keep it exact.
    delta = warmup * base_scale(logb_w, base) * eps
    s = mu_w + delta
    # The zero branch of eq. (2) is taken where |delta| <= lam (a NaN delta is active).
    active = ~(delta.abs() <= lam_w)
    zero = zero_branch(mu_w, logb_w).detach().expand_as(s)
    # Eq. (2) on sg[s]: zero where |s - mu| <= lam, else s - sign(s - mu) lam.
    s_sg = s.detach()
    thresholded = torch.where(active.detach(), s_sg - torch.sign(delta.detach()) * lam_w, zero)
    if estimator == "straight":
        # Eq. (4): z~ = s + T(sg[s]) - sg[s].
        z = s + (thresholded - s_sg)
    elif estimator == "straight_shift":
        # The paper's public code: the shift mu added to active entries keeps its gradient.
        z = s + (thresholded - s_sg) + active * (mu_w - mu_w.detach())
    else:
        # Exact almost-everywhere gradient of z = T(s): zero where z is zero.
        z = torch.where(active, s - torch.sign(delta.detach()) * lam_w, zero)
    z = z.to(out_dtype)
    if not return_kl:
        return z
    kl = kl_divergence(mu.to(work), logb.to(work), base, prior_scale).sum(-1).to(out_dtype)
    return z, kl


# --------------------------------------------------------------------------------------
# Backend contract (implemented identically by triton_kernels.py and csrc/threshold_sample.cpp)
# --------------------------------------------------------------------------------------

def _lam_work(lam: torch.Tensor | None, lam_value: float, work: torch.dtype):
    return lam.to(work) if lam is not None else lam_value


def _delta(mu, logb, seed, J, base, warmup, work):
    M, d = mu.shape
    eps = base_noise(base, seed, M * J, d, work).reshape(M, J, d)
    return warmup * base_scale(logb.to(work), base)[:, None, :] * eps


def threshold_sample_forward(mu, logb, lam, lam_value, seed, num_samples, base, warmup,
                             return_kl, prior_scale):
    """Contract: ``mu, logb (M, d)``; ``lam`` None or an ``(M, J, d)`` view; returns
    ``z (M, J, d)`` contiguous in ``mu.dtype`` and ``kl (M,)`` in the compute dtype (or None)."""
    work = compute_dtype(mu.dtype)
    delta = _delta(mu, logb, seed, num_samples, base, warmup, work)
    lam_w = _lam_work(lam, lam_value, work)
    mu_w, logb_w = mu.to(work), logb.to(work)
    s = mu_w[:, None, :] + delta
    zero = zero_branch(mu_w, logb_w)[:, None, :].expand_as(s)
    z = torch.where(delta.abs() <= lam_w, zero, s - torch.sign(delta) * lam_w)
    kl = None
    if return_kl:
        kl = kl_divergence(mu.to(work), logb.to(work), base, prior_scale).sum(-1)
    return z.to(mu.dtype).contiguous(), kl


def kl_divergence_grads(mu, logb, base, prior_scale):
    """Partial derivatives of :func:`kl_divergence` with respect to ``mu`` and ``logb``."""
    if base == "laplace":
        b = torch.exp(logb)
        decay = torch.exp(-mu.abs() / b)
        return (torch.sign(mu) * (1.0 - decay) / prior_scale,
                decay * (b + mu.abs()) / prior_scale - 1.0)
    return mu / prior_scale, torch.exp(logb) / (2.0 * prior_scale) - 0.5


def threshold_sample_backward(grad_z, grad_kl, mu, logb, lam, lam_value, seed, num_samples,
                              base, estimator, warmup, prior_scale, lam_requires_grad):
    """Contract: returns ``grad_mu, grad_logb`` ``(M, d)`` in ``mu.dtype`` (reduced over
    the J samples in the compute dtype) and ``grad_lam (M, J, d)`` in the compute dtype
    (float32, float64 for float64 inputs) or None.

    With ``g = grad_z``, ``delta = s - mu`` and ``a = 1[|delta| > lam]``:
    straight (eq. 4)    grad_mu = sum_j g,          grad_logb = sum_j g ds/dlogb
    subgradient         grad_mu = sum_j g a,        grad_logb = sum_j g a ds/dlogb
    straight_shift      grad_mu = sum_j g (1 + a),  grad_logb as straight
    grad_lam = -g sign(delta) a for every estimator; ds/dlogb = delta (Laplace) or
    delta / 2 (Gaussian). ``a`` is 1 where ``|delta| <= lam`` is false (so also for a NaN
    delta, whose ``sign`` stays NaN in ``grad_lam``).
    """
    work = compute_dtype(mu.dtype)
    delta = _delta(mu, logb, seed, num_samples, base, warmup, work)
    lam_w = _lam_work(lam, lam_value, work)
    g = grad_z.to(work)
    active = (~(delta.abs() <= lam_w)).to(work)  # a NaN delta is on the active branch
    ds_dlogb = delta if base == "laplace" else 0.5 * delta
    if estimator == "straight":
        g_mu, g_logb = g, g * ds_dlogb
    elif estimator == "subgradient":
        g_mu, g_logb = g * active, g * active * ds_dlogb
    else:
        g_mu, g_logb = g * (1.0 + active), g * ds_dlogb
    grad_mu, grad_logb = g_mu.sum(1), g_logb.sum(1)
    if grad_kl is not None:
        d_mu, d_logb = kl_divergence_grads(mu.to(work), logb.to(work), base, prior_scale)
        grad_mu = grad_mu + grad_kl.to(work)[:, None] * d_mu
        grad_logb = grad_logb + grad_kl.to(work)[:, None] * d_logb
    grad_lam = None
    if lam_requires_grad:
        grad_lam = -g * sign_keeping_nan(delta) * active
    return grad_mu.to(mu.dtype), grad_logb.to(mu.dtype), grad_lam
