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
                 warmup_start: float = 0.0, warmup_step: float = 2e-4, warmup_delay: int = 1500,
                 tau_start: float = 1.0, tau_decay: float = 0.9995, tau_min: float = 0.5,
                 **unused):
        super().__init__(latent_dim)
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

    def _expand(self, params, num_samples):
        mu = params["mu"][:, None, :].expand(-1, num_samples, -1)
        sigma = torch.exp(0.5 * params["logvar"])[:, None, :].expand(-1, num_samples, -1)
        logit = params["logit_gamma"][:, None, :].expand(-1, num_samples, -1)
        return mu, sigma, logit

    def sample(self, params, num_samples, step):
        mu, sigma, logit = self._expand(params, num_samples)
        slab = mu + sigma * torch.randn_like(mu)
        u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
        relaxed = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.temperature(step))
        hard = (relaxed > 0.5).to(relaxed.dtype)
        selector = hard + relaxed - relaxed.detach()
        kl = self.kl_per_dim(params).sum(-1) * self.warmup(step)
        return CodeSample(slab * selector, kl)

    def kl_per_dim(self, params):
        """Tonolini et al. (2020): slab KL weighted by gamma plus the Bernoulli KL."""
        mu, logvar = params["mu"], params["logvar"]
        gamma = torch.sigmoid(params["logit_gamma"]).clamp(1e-6, 1 - 1e-6)
        slab_kl = (0.5 * (math.log(self.prior_variance) - logvar)
                   + (logvar.exp() + mu * mu) / (2 * self.prior_variance) - 0.5)
        bernoulli_kl = (gamma * (torch.log(gamma) - math.log(self.alpha))
                        + (1 - gamma) * (torch.log1p(-gamma) - math.log1p(-self.alpha)))
        return gamma * slab_kl + bernoulli_kl

    @torch.no_grad()
    def log_density_sample(self, params, num_samples, step):
        mu, sigma, logit = self._expand(params, num_samples)
        slab = mu + sigma * torch.randn_like(mu)
        on = torch.rand_like(mu) < torch.sigmoid(logit)
        z = torch.where(on, slab, torch.zeros_like(slab))
        log_q = spike_slab_log_density(z, F.logsigmoid(-logit),
                                       F.logsigmoid(logit) + normal_log_pdf(z - mu, sigma))
        sigma0 = tensor_like(self.prior_variance ** 0.5, mu)
        log_p = spike_slab_log_density(z, tensor_like(math.log1p(-self.alpha), mu),
                                       math.log(self.alpha) + normal_log_pdf(z, sigma0))
        return LogDensitySample(z, (log_p - log_q).sum(-1))

    def describe(self):
        return {"prior": self.name, "spike_prior": self.alpha,
                "prior_variance": self.prior_variance}
