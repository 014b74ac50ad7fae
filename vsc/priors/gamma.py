"""Learned thresholds: a factorial Gamma posterior ``q(lam | x)`` against the prior
``Gamma(alpha0, alpha0 / lam0)`` (section 3.2, Appendix B).

The inference network outputs ``(log alpha, log beta)`` per latent dimension; the
values are clamped to ``[1e-6, 1e6]`` and ``lam`` is drawn with the pathwise
(implicit reparameterization) gradient of ``torch.distributions.Gamma.rsample``
(Jankowiak & Obermeyer 2018). Its KL is weighted ``kl_weight`` (0.1) relative to the
base distribution's (``beta2 = 0.1 beta1``, Appendix D).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Gamma, kl_divergence

_LOG_MIN, _LOG_MAX = math.log(1e-6), math.log(1e6)


class GammaThreshold:
    heads = ("log_alpha", "log_beta")

    def __init__(self, lam0: float, *, alpha0: float = 3.0, kl_weight: float = 0.1):
        if alpha0 <= 0:
            raise ValueError(f"gamma_alpha0 must be > 0, got {alpha0}")
        self.lam0 = lam0
        self.alpha0 = alpha0
        self.beta0 = alpha0 / lam0
        self.kl_weight = kl_weight

    def posterior(self, params) -> Gamma:
        alpha = params["log_alpha"].float().clamp(_LOG_MIN, _LOG_MAX).exp()
        beta = params["log_beta"].float().clamp(_LOG_MIN, _LOG_MAX).exp()
        # positive by construction: no argument validation (it reads the tensors back to the
        # host, a device synchronisation per step)
        return Gamma(alpha, beta, validate_args=False)

    def prior(self, like: torch.Tensor) -> Gamma:
        return Gamma(torch.full_like(like, self.alpha0), torch.full_like(like, self.beta0),
                     validate_args=False)

    def sample(self, q: Gamma, num_samples: int) -> torch.Tensor:
        """``lam`` of shape ``(B, J, d)``, one threshold per sample."""
        return q.rsample((num_samples,)).transpose(0, 1)

    def kl(self, q: Gamma) -> torch.Tensor:
        """``(B,)`` KL(q(lam | x) || p(lam)) summed over dimensions."""
        return kl_divergence(q, self.prior(q.concentration)).sum(-1)

    def log_prior_ratio(self, q: Gamma, lam: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` ``log p(lam) - log q(lam | x)`` for samples ``lam (B, K, d)``."""
        lam = lam.clamp(min=1e-30).transpose(0, 1)            # (K, B, d)
        ratio = self.prior(q.concentration).log_prob(lam) - q.log_prob(lam)
        return ratio.sum(-1).transpose(0, 1)
