"""vsc-kernels: fused ops for variational sparse coding with learned thresholding
(Fallah & Rozell, ICML 2022).

Ops (each a ``torch.library`` custom op with autograd, traceable by ``torch.compile``):

* :func:`threshold_sample` -- reparameterized Laplace/Gaussian sample, shifted
  soft-threshold (eq. 2), straight-through backward (eq. 4), optional fused KL.
* :func:`kl_divergence` -- per-element KL of the base distribution (Appendix B).
* :func:`fista` -- batched FISTA (Beck & Teboulle 2009) for the lasso, per-row stopping.
* :func:`linear_elbo` -- the linear generator's ELBO (eqs. 6, 12) selected over J samples
  (max ELBO eq. 9, average eq. 7, IWAE bound, the public code's softmin), reconstructions
  never materialized.
* :func:`elbo_select` -- per-sample ELBO of decoded samples (DNN generator) and the
  max/avg/iwae/softmin selection over the J samples (section 3.3).
* :func:`sparse_decode` -- ``z @ A^T`` skipping the zeros of thresholded codes.

Backends: ``reference`` (plain PyTorch), ``triton`` (CUDA), ``cpp`` (CPU, OpenMP);
see :mod:`vsc_kernels._dispatch`.
"""

from ._dispatch import BACKENDS, resolve_backend
from ._elbo import ElboResult
from .elbo_select import elbo_select
from .fista import FistaResult, fista
from .linear_elbo import linear_elbo
from .sparse_decode import sparse_decode
from .threshold_sample import kl_divergence, threshold_sample

__all__ = ["threshold_sample", "kl_divergence", "fista", "FistaResult", "linear_elbo",
           "elbo_select", "ElboResult", "sparse_decode", "BACKENDS", "resolve_backend"]
__version__ = "0.1.0"
