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

Backends: ``reference`` (plain PyTorch), ``triton`` (CUDA), ``cpp`` (CPU, OpenMP;
vectorized per instruction set: AVX-512, AVX2 or portable, the CPU capability that ATen
uses); see :mod:`vsc_kernels._dispatch`. Eager calls run the kernels through a plain
``torch.autograd.Function`` (no ``torch.library`` dispatch); under ``torch.compile`` the
registered custom ops are traced instead.

Host synchronisation: ``threshold_sample``, ``linear_elbo`` and ``elbo_select`` never read
a tensor value back to the host in their default paths (so a training step can be
captured in a CUDA graph); ``sparse_decode`` reads its count of non-zeros (one read per
sparse product; none with ``dense_above=0``, the CUDA default) and ``fista`` its
stopping test and dictionary check.

Non-finite policy (every op, every backend; ``tests/test_nonfinite.py``):

* NaN and inf in an input propagate: every output element computed from one is NaN or
  +-inf -- never an exact zero, a plausible finite number, a selected "best" sample that
  hides it, or a "converged" flag. The kernels give the reference's result there (where
  the reference's straight-through arithmetic ``z = s + (T(s) - s)`` makes NaN of an
  infinite ``s``, a kernel may write the infinity: both are non-finite).
* ``threshold_sample``: ``z`` is NaN or +-inf at every element (all ``J`` samples) whose
  ``mu`` or ``logb`` is NaN or +-inf: the threshold's zero branch is ``(mu - mu) +
  (logb - logb)``, i.e. +0.0 for finite inputs and NaN otherwise; ``kl`` is non-finite for
  such rows. ``logb`` above ``log(FLT_MAX) = 88.7`` (float32) overflows the scale: ``z``
  is +-inf there (an overflow is reported, not clipped, and not checked, which would need
  a host read). A ``lam`` float must be finite and ``>= 0`` (ValueError). A ``lam``
  tensor with a negative, NaN or inf entry raises ValueError naming ``lam`` where reading
  it costs no synchronisation (the ``cpp`` kernels check while they read it, the
  ``reference`` checks before); the Triton kernels (CUDA) write NaN where such a
  threshold applies instead, or raise with ``VSC_KERNELS_CHECK_VALUES=1`` (one read).
* ``linear_elbo`` / ``elbo_select``: ``per_sample[b, j]`` is non-finite where ``x_b``, the
  sample, ``A`` or ``kl`` is; NaN counts as the lowest loss (``torch.argmin``), so
  ``method="max"`` selects it and the row's loss is NaN; a ``+inf`` sample is not the
  minimum unless all are (the arithmetic of eq. 9). The C++ kernels skip the codes'
  zeros only while ``A`` (and, in the backward, the residuals) are finite, so ``0 * nan``
  reaches the outputs exactly as in the dense product.
* ``fista``: a NaN or inf in ``x`` or ``init`` makes that row's codes NaN/inf, and it is
  never converged (it runs to ``max_iter``); a NaN or inf in ``A`` is a ValueError naming
  ``A`` (the codes are promised finite and the check is one read in an op that reads
  anyway); ``lam`` tensors must be finite and ``>= 0``.
* ``sparse_decode``: NaN/inf in ``z`` or ``A`` propagate as in the dense product (a call
  whose ``A`` -- or, for ``grad_A``, ``grad_out`` -- is not finite takes the dense path).
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
