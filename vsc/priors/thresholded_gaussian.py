"""Table 1 row: the Thresholded Gaussian: Gaussian base, shifted soft-threshold lam0 (0.52
in Appendix D gives ~10% non-zeros).
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class ThresholdedGaussian(ThresholdSamplePrior):
    name = "thresholded_gaussian"
    base = "gaussian"
    default_threshold = 0.52
