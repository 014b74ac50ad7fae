"""Table 1 row: the Thresholded Laplacian (the paper's method): Laplace base, shifted soft-
threshold lam0 (0.25 in Appendix D gives ~10% non-zeros).
"""

from __future__ import annotations

from .thresholded import ThresholdSamplePrior


class ThresholdedLaplacian(ThresholdSamplePrior):
    name = "thresholded_laplacian"
    base = "laplace"
    default_threshold = 0.25
