"""The interface every prior implements (one prior = one file in this package).

A prior turns the inference network's heads (one ``(B, d)`` tensor per name in
``heads``) into ``J`` reparameterized code samples and the KL term of the ELBO
(eq. 5), and, for evaluation, into hard samples with their log densities (the
IWAE bound, per-dimension KL for posterior collapse).

Schedules (the warm-ups and temperatures of Appendix D) are functions of the
global training step, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class CodeSample:
    """``z (B, J, d)`` codes; ``kl`` ``(B,)`` or ``(B, J)`` already combined with any
    secondary KL weights (the ELBO multiplies it by ``beta``)."""

    z: torch.Tensor
    kl: torch.Tensor


@dataclass
class LogDensitySample:
    """Hard samples for evaluation: ``z (B, K, d)`` and ``log p(z) - log q(z | x)``
    ``(B, K)`` (for the IWAE bound; the likelihood term is added by the caller)."""

    z: torch.Tensor
    log_prior_ratio: torch.Tensor


def linear_warmup(step: int, start: float, increment: float, delay: int = 0,
                  maximum: float = 1.0) -> float:
    """``start + increment * max(step - delay, 0)``, capped at ``maximum`` (Appendix B/D)."""
    return min(maximum, start + increment * max(step - delay, 0))


class Prior:
    """Base class. Subclasses set ``name`` and ``heads`` and implement the methods."""

    name: str = ""
    heads: tuple[str, ...] = ()

    def __init__(self, latent_dim: int):
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    # -- training ---------------------------------------------------------------------
    def sample(self, params: dict[str, torch.Tensor], num_samples: int, step: int) -> CodeSample:
        raise NotImplementedError

    def schedule(self, step: int) -> tuple:
        """The numbers that :meth:`sample` derives from ``step`` (warm-ups,
        temperatures). A training step captured in a CUDA graph holds them fixed, so it
        is replayed only while they stay the same (vsc.graphed_step)."""
        return ()

    # -- evaluation -------------------------------------------------------------------
    def kl_per_dim(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, d)`` KL of ``q(s_i | x)`` against the prior, per latent dimension (eq. 15)."""
        raise NotImplementedError

    def log_density_sample(self, params: dict[str, torch.Tensor], num_samples: int,
                           step: int) -> LogDensitySample:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"prior": self.name}


# -- log densities shared by several priors -----------------------------------------------

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def laplace_log_pdf(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log of ``exp(-|v| / b) / (2 b)``."""
    return -torch.log(2 * b) - v.abs() / b


def normal_log_pdf(v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return -LOG_SQRT_2PI - torch.log(sigma) - 0.5 * (v / sigma) ** 2


def log_normal_tail(t: torch.Tensor) -> torch.Tensor:
    """``log P(|N(0, 1)| > t)`` for ``t >= 0``, stable for large ``t``."""
    return torch.log(torch.special.erfc(t / math.sqrt(2.0)).clamp(min=1e-300))


def spike_slab_log_density(z: torch.Tensor, log_p_zero: torch.Tensor,
                           log_slab: torch.Tensor) -> torch.Tensor:
    """Log density of a spike at 0 (probability mass) plus a slab (Lebesgue density),
    with respect to counting measure at 0 plus Lebesgue measure elsewhere."""
    return torch.where(z == 0, log_p_zero, log_slab)


def tensor_like(value: float, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
