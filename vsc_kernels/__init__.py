"""vsc-kernels: fused ops for variational sparse coding with learned thresholding
(Fallah & Rozell, ICML 2022).

Ops (each a ``torch.library`` custom op with autograd, traceable by ``torch.compile``):

* :func:`threshold_sample` -- reparameterized Laplace/Gaussian sample, shifted
  soft-threshold (eq. 2), straight-through backward (eq. 4), optional fused KL.
* :func:`kl_divergence` -- per-element KL of the base distribution (Appendix B).
* :func:`fista` -- batched FISTA (Beck & Teboulle 2009) for the lasso, per-row stopping.
* :func:`linear_elbo` -- the linear generator's ELBO (eqs. 6, 12) selected over J samples
  (max ELBO eq. 9, average eq. 7, IWAE), reconstructions never materialized.

Backends: ``reference`` (plain PyTorch), ``triton`` (CUDA), ``cpp`` (CPU, OpenMP);
see :mod:`vsc_kernels._dispatch`.
"""

from ._dispatch import BACKENDS, resolve_backend
from .fista import FistaResult, fista
from .linear_elbo import ElboResult, linear_elbo
from .threshold_sample import kl_divergence, threshold_sample

__all__ = ["threshold_sample", "kl_divergence", "fista", "FistaResult", "BACKENDS",
           "resolve_backend", "linear_elbo", "ElboResult"]
__version__ = "0.1.0"
