"""Table 1 row: the Laplacian prior (Barello et al. 2018): no threshold (lam0 = 0),
Laplace(0, b0) prior.
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class Laplacian(ThresholdSamplePrior):
    name = "laplacian"
    base = "laplace"

    def __init__(self, latent_dim: int, **options):
        if options.get("threshold", 0.0) != 0.0 or options.get("learn_threshold", False):
            raise ValueError("prior 'laplacian' has no threshold; use prior 'thresholded_laplacian'")
        options.pop("threshold", None)
        super().__init__(latent_dim, threshold=0.0, **options)
