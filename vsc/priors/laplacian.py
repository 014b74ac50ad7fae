"""Table 1 row: the Laplacian prior (Barello et al. 2018): no threshold (lam0 = 0),
Laplace(0, b0) prior.
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class Laplacian(ThresholdSamplePrior):
    name = "laplacian"
    base = "laplace"
