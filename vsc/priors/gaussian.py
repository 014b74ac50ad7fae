"""Table 1 row: the Gaussian prior of the VAE (Kingma & Welling 2014): no threshold, N(0,
sigma0^2) prior.
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class Gaussian(ThresholdSamplePrior):
    name = "gaussian"
    base = "gaussian"

    def __init__(self, latent_dim: int, **options):
        if options.get("threshold", 0.0) != 0.0 or options.get("learn_threshold", False):
            raise ValueError("prior 'gaussian' has no threshold; use prior 'thresholded_gaussian'")
        options.pop("threshold", None)
        super().__init__(latent_dim, threshold=0.0, **options)
