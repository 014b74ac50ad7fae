"""Priors of Table 1, one file each, one interface (:class:`vsc.priors.base.Prior`).

To add a prior: subclass ``Prior`` in a new file (``heads``, ``sample``,
``kl_per_dim``, ``log_density_sample``) and register it in ``PRIORS``.
"""

from __future__ import annotations

from .base import CodeSample, LogDensitySample, Prior
from .gaussian import Gaussian
from .laplacian import Laplacian
from .spike_slab import SpikeSlab
from .thresholded_gaussian import ThresholdedGaussian
from .thresholded_laplacian import ThresholdedLaplacian

PRIORS = {cls.name: cls for cls in (Gaussian, Laplacian, SpikeSlab, ThresholdedGaussian,
                                    ThresholdedLaplacian)}


def make_prior(name: str, latent_dim: int, **options) -> Prior:
    """The prior called ``name`` (one of ``PRIORS``) with its options."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name](latent_dim, **options)


__all__ = ["Prior", "CodeSample", "LogDensitySample", "PRIORS", "make_prior"]
