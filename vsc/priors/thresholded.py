"""Priors sampled with the fused ``vsc_kernels.threshold_sample`` op.

One implementation covers four rows of Table 1: a Laplace or Gaussian base
distribution (Appendix B) with a shifted soft-threshold (eq. 2) of ``lam0``, or
with ``lam0 = 0`` the plain Laplacian (Barello et al. 2018) and Gaussian (the
VAE) priors. The threshold may instead be learned per sample with a Gamma
posterior (:mod:`vsc.priors.gamma`). The scale warm-up of Appendix B multiplies
the inferred scale: ``w = min(1, 0.1 + 2e-4 * max(step - delay, 0))`` (``delay = 0`` in
the paper's text; the public code holds 0.1 for 1,500 steps and does not warm up the
Gaussian base, see :mod:`vsc.conventions`).

Heads: ``mu`` and ``logb`` (``log b`` for Laplace, the log-variance for Gaussian),
plus ``log_alpha`` and ``log_beta`` with a learned threshold.
"""

from __future__ import annotations

import torch

import vsc_kernels

from .base import (CodeSample, LogDensitySample, Prior, laplace_log_pdf, linear_warmup,
                   log_normal_tail, normal_log_pdf, spike_slab_log_density, tensor_like)
from .gamma import GammaThreshold


def exact_shift_gradient(z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``z (B, J, d)`` unchanged, minus the straight-through gradient of the shift ``mu
    (B, d)`` at the entries that are zero.

    With the noise fixed, ``z = 1[|w b eps| > lam] (mu + w b eps - sign(eps) lam)``: whether
    an entry is active does not depend on ``mu``, so ``dz/dmu = 1[z != 0]`` exactly; only
    the scale (and the threshold) meet the non-differentiable boundary. The straight-
    through estimator (eq. 4) also hands ``mu`` the reconstruction gradient at entries that
    are zero, where ``mu`` changes nothing; under max-ELBO sampling a unit whose active
    samples overshoot is never selected, so that is the only gradient its shift receives,
    one-signed, and the Laplace KL's pull (at most ``beta / b0``) is all that opposes it:
    the shift runs away and the run diverges (README, "The learned-threshold Laplacian").
    The scale keeps the straight-through gradient everywhere, which is what lets an
    unused unit turn on (Appendix C).
    """
    shift = mu[:, None, :] if z.dim() == mu.dim() + 1 else mu
    return z - (shift - shift.detach()) * (z == 0).to(z.dtype)


class ThresholdSamplePrior(Prior):
    """Base distribution ``base`` ("laplace" or "gaussian"), threshold ``threshold``
    (default ``default_threshold``), prior scale ``prior_scale`` (``b0`` for Laplace,
    the prior variance ``sigma0^2`` for Gaussian). A subclass with
    ``default_threshold = None`` has no threshold (the plain Gaussian and Laplacian
    priors) and refuses one."""

    base = "laplace"
    default_threshold: float | None = None

    def __init__(self, latent_dim: int, *, threshold: float | None = None,
                 prior_scale: float = 0.1, estimator: str = "straight",
                 learn_threshold: bool = False, gamma_alpha0: float = 3.0,
                 gamma_kl_weight: float = 0.1, warmup_start: float = 0.1,
                 warmup_step: float = 2e-4, warmup_delay: int = 0,
                 shift_gradient: str = "straight"):
        super().__init__(latent_dim)
        if self.default_threshold is None:
            if (threshold or 0.0) != 0.0 or learn_threshold:
                raise ValueError(f"prior '{self.name}' has no threshold; use prior "
                                 f"'thresholded_{self.name}'")
            threshold = 0.0
        elif threshold is None:
            threshold = self.default_threshold
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if prior_scale <= 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        if learn_threshold and threshold <= 0:
            raise ValueError("learn_threshold needs threshold > 0 (the Gamma prior's mean lam0)")
        self.threshold = float(threshold)
        self.prior_scale = float(prior_scale)
        self.estimator = estimator
        self.warmup_start = warmup_start
        self.warmup_step = warmup_step
        self.warmup_delay = warmup_delay
        if shift_gradient not in ("straight", "exact"):
            raise ValueError(f"shift_gradient must be 'straight' or 'exact', got {shift_gradient!r}")
        self.shift_gradient = shift_gradient
        self.gamma = (GammaThreshold(self.threshold, alpha0=gamma_alpha0,
                                     kl_weight=gamma_kl_weight) if learn_threshold else None)
        self.heads = ("mu", "logb") + (GammaThreshold.heads if self.gamma else ())

    def warmup(self, step: int) -> float:
        return linear_warmup(step, self.warmup_start, self.warmup_step, self.warmup_delay)

    def schedule(self, step: int) -> tuple:
        return (self.warmup(step),)

    def _threshold(self, params, num_samples):
        """(lam for threshold_sample, q(lam | x) or None)."""
        if self.gamma is None:
            return self.threshold, None
        q = self.gamma.posterior(params)
        return self.gamma.sample(q, num_samples), q

    def sample(self, params, num_samples, step):
        lam, q_lam = self._threshold(params, num_samples)
        z, kl = vsc_kernels.threshold_sample(
            params["mu"], params["logb"], lam, num_samples=num_samples, base=self.base,
            estimator=self.estimator, warmup=self.warmup(step), return_kl=True,
            prior_scale=self.prior_scale)
        if self.shift_gradient == "exact" and self.estimator != "subgradient":
            z = exact_shift_gradient(z, params["mu"])
        if q_lam is not None:
            kl = kl + self.gamma.kl_weight * self.gamma.kl(q_lam)
        return CodeSample(z, kl)

    def kl_per_dim(self, params):
        return vsc_kernels.kl_divergence(params["mu"], params["logb"], base=self.base,
                                         prior_scale=self.prior_scale)

    # -- log densities of the thresholded distribution (Prop. 3.1) ---------------------
    def _log_density(self, z, center, scale, lam):
        """log density of ``T(center + scale * eps; lam, center)`` at ``z``."""
        v = z - center
        if self.base == "laplace":
            # P(z = 0) = 1 - exp(-lam / b); slab: Laplace density of |v| + lam (eq. 14).
            log_zero = torch.log(-torch.expm1(-lam / scale).clamp(max=-1e-30))
            log_slab = laplace_log_pdf(v.abs() + lam, scale)
        else:
            log_tail = log_normal_tail(lam / scale)
            log_zero = torch.log(-torch.expm1(log_tail).clamp(max=-1e-30))
            log_slab = normal_log_pdf(v.abs() + lam, scale)
        if isinstance(lam, float) and lam == 0.0:
            return log_slab
        return spike_slab_log_density(z, log_zero, log_slab)

    @torch.no_grad()
    def log_density_sample(self, params, num_samples, step):
        mu, logb = params["mu"], params["logb"]
        lam, q_lam = self._threshold(params, num_samples)
        w = self.warmup(step)
        z = vsc_kernels.threshold_sample(mu, logb, lam, num_samples=num_samples, base=self.base,
                                         warmup=w)
        scale = w * (torch.exp(logb) if self.base == "laplace" else torch.exp(0.5 * logb))
        prior_scale = tensor_like(self.prior_scale if self.base == "laplace"
                                  else self.prior_scale ** 0.5, mu)
        lam_t = lam if isinstance(lam, float) else lam.to(mu.dtype)
        log_q = self._log_density(z, mu[:, None, :], scale[:, None, :], lam_t).sum(-1)
        log_p = self._log_density(z, torch.zeros_like(mu)[:, None, :], prior_scale, lam_t).sum(-1)
        ratio = log_p - log_q
        if q_lam is not None:
            ratio = ratio + self.gamma.log_prior_ratio(q_lam, lam)
        return LogDensitySample(z, ratio)

    def describe(self):
        return {"prior": self.name, "base": self.base, "threshold": self.threshold,
                "prior_scale": self.prior_scale, "estimator": self.estimator,
                "shift_gradient": self.shift_gradient,
                "learn_threshold": self.gamma is not None}
