"""Table 1 row: the Gaussian prior of the VAE (Kingma & Welling 2014): no threshold, N(0,
sigma0^2) prior.
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class Gaussian(ThresholdSamplePrior):
    name = "gaussian"
    base = "gaussian"
