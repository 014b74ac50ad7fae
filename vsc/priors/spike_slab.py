"""Table 1 row: the Spike-and-Slab prior of Tonolini et al. (2020).

``q(z_i | x) = (1 - gamma_i) delta(z_i) + gamma_i N(mu_i, sigma_i^2)`` with the
prior ``(1 - alpha) delta + alpha N(0, sigma0^2)`` (``alpha = 0.1``, the prior
probability of a non-zero). Each Bernoulli selector is relaxed with a Gumbel-
softmax (binary Concrete) sample at temperature ``tau`` and made exact with the
straight-through estimator (Jang et al. 2017): the forward pass uses the hard 0/1
selector, the backward pass the relaxed one's gradient.

Schedules (Appendix D): the KL warm-up ``w = min(1, 2e-4 * max(step - 1500, 0))``
multiplies the KL term; ``tau = max(0.5, 0.9995^step)``.

Heads: ``mu``, ``logvar`` (slab log-variance) and ``logit_gamma``.

``public_code=True`` follows the paper's public code (``sample_concreteslab``) instead:
the third head is ``log_gamma = -relu(-h)`` (``gamma = exp(log_gamma)``, clamped to
``[1e-6, 1 - 1e-6]``, is the KL's spike probability) and the relaxed selector is
``sigmoid((logistic noise + log_gamma) / tau)``; the warm-up ``w`` (0.1, held for 1,500
steps, then ``+2e-4`` per step) does not multiply the KL but the slab, which is drawn
as ``w mu + (w sigma + sqrt(1 - w)) eps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import (CodeSample, LogDensitySample, Prior, linear_warmup, normal_log_pdf,
                   spike_slab_log_density, tensor_like)


class SpikeSlab(Prior):
    name = "spike_slab"
    heads = ("mu", "logvar", "logit_gamma")

    def __init__(self, latent_dim: int, *, spike_prior: float = 0.1, prior_scale: float = 0.1,
                 warmup_start: float | None = None, warmup_step: float = 2e-4,
                 warmup_delay: int = 1500, tau_start: float = 1.0, tau_decay: float = 0.9995,
                 tau_min: float = 0.5, public_code: bool = False, **unused):
        super().__init__(latent_dim)
        self.public_code = public_code
        if public_code:
            self.heads = ("mu", "logvar", "log_gamma")
        if warmup_start is None:
            warmup_start = 0.1 if public_code else 0.0
        if unused.get("threshold") or unused.get("learn_threshold"):
            raise ValueError("prior 'spike_slab' has no threshold")
        if not 0 < spike_prior < 1:
            raise ValueError(f"spike_prior must be in (0, 1), got {spike_prior}")
        if prior_scale <= 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        self.alpha = spike_prior
        self.prior_variance = prior_scale
        self.warmup_start, self.warmup_step, self.warmup_delay = warmup_start, warmup_step, warmup_delay
        self.tau_start, self.tau_decay, self.tau_min = tau_start, tau_decay, tau_min

    def warmup(self, step: int) -> float:
        return linear_warmup(step, self.warmup_start, self.warmup_step, self.warmup_delay)

    def temperature(self, step: int) -> float:
        return max(self.tau_min, self.tau_start * self.tau_decay ** step)

    def schedule(self, step: int) -> tuple:
        return (self.warmup(step), self.temperature(step))

    def _log_gamma(self, params) -> torch.Tensor:
        """The public code's ``log gamma = -relu(-h)`` (so ``gamma <= 1``)."""
        return -F.relu(-params["log_gamma"])

    def _gamma(self, params) -> torch.Tensor:
        if self.public_code:
            return self._log_gamma(params).exp().clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid(params["logit_gamma"]).clamp(1e-6, 1 - 1e-6)

    def _logit(self, params) -> torch.Tensor:
        """The logit of the Bernoulli selector (its binary Concrete relaxation's location)."""
        if self.public_code:
            return self._log_gamma(params)     # as the public code does (not log(g / (1 - g)))
        return params["logit_gamma"]

    def _expand(self, params, num_samples):
        mu = params["mu"][:, None, :].expand(-1, num_samples, -1)
        sigma = torch.exp(0.5 * params["logvar"])[:, None, :].expand(-1, num_samples, -1)
        logit = self._logit(params)[:, None, :].expand(-1, num_samples, -1)
        return mu, sigma, logit

    def sample(self, params, num_samples, step):
        mu, sigma, logit = self._expand(params, num_samples)
        w = self.warmup(step)
        if self.public_code:
            slab = w * mu + (w * sigma + (1.0 - w) ** 0.5) * torch.randn_like(mu)
        else:
            slab = mu + sigma * torch.randn_like(mu)
        u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
        relaxed = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.temperature(step))
        hard = (relaxed > 0.5).to(relaxed.dtype)
        selector = hard + relaxed - relaxed.detach()
        kl = self.kl_per_dim(params).sum(-1)
        return CodeSample(slab * selector, kl if self.public_code else kl * w)

    def kl_per_dim(self, params):
        """Tonolini et al. (2020): slab KL weighted by gamma plus the Bernoulli KL."""
        mu, logvar = params["mu"], params["logvar"]
        gamma = self._gamma(params)
        slab_kl = (0.5 * (math.log(self.prior_variance) - logvar)
                   + (logvar.exp() + mu * mu) / (2 * self.prior_variance) - 0.5)
        bernoulli_kl = (gamma * (torch.log(gamma) - math.log(self.alpha))
                        + (1 - gamma) * (torch.log1p(-gamma) - math.log1p(-self.alpha)))
        return gamma * slab_kl + bernoulli_kl

    @torch.no_grad()
    def log_density_sample(self, params, num_samples, step):
        mu, sigma, _ = self._expand(params, num_samples)
        if self.public_code:    # the slab the warm-up draws from
            w = self.warmup(step)
            mu, sigma = w * mu, w * sigma + (1.0 - w) ** 0.5
        slab = mu + sigma * torch.randn_like(mu)
        gamma = self._gamma(params)[:, None, :].expand_as(mu)
        on = torch.rand_like(mu) < gamma
        z = torch.where(on, slab, torch.zeros_like(slab))
        log_q = spike_slab_log_density(z, torch.log1p(-gamma),
                                       torch.log(gamma) + normal_log_pdf(z - mu, sigma))
        sigma0 = tensor_like(self.prior_variance ** 0.5, mu)
        log_p = spike_slab_log_density(z, tensor_like(math.log1p(-self.alpha), mu),
                                       math.log(self.alpha) + normal_log_pdf(z, sigma0))
        return LogDensitySample(z, (log_p - log_q).sum(-1))

    def describe(self):
        return {"prior": self.name, "spike_prior": self.alpha,
                "prior_variance": self.prior_variance, "public_code": self.public_code}
